"""Every program that shares a deepfeed home (assets, sensors, CLI, inference server, core
defaults) reaches its files through one Locations, so they always meet in the same folders."""

from __future__ import annotations

from pathlib import Path

from deepfeed.audit_cli import default_ledger as cli_default_ledger
from deepfeed.core.loop import feedback, inference_log
from deepfeed.core.platform import access
from deepfeed.core.platform.artifacts import ArtifactStore
from deepfeed.core.platform.locations import Locations
from deepfeed.resources.locations import LocationsResource
from deepfeed.serve.app import ServeSettings


def _paths(locations: Locations) -> dict[str, Path]:
    return {
        "audit_ledger": locations.audit_ledger,
        "privacy_ledger": locations.privacy_ledger,
        "feedback_root": locations.feedback_root,
        "inference_log_root": locations.inference_log_root,
        "dagster_home": locations.dagster_home,
        "teacher_cache": locations.teacher_cache(),
        "training_state": locations.training_state("finetuned_model", "abc-base"),
    }


def test_every_location_is_its_own_place_inside_the_home(tmp_path):
    paths = _paths(Locations(tmp_path))
    assert all(path.is_relative_to(tmp_path) and path != tmp_path for path in paths.values()), paths
    assert len(set(paths.values())) == len(paths)
    # No location lies inside another one's folder: a store never reads another's files.
    folders = [p for name, p in paths.items() if name not in ("audit_ledger", "privacy_ledger")]
    assert not any(a != b and a.is_relative_to(b) for a in folders for b in folders)


def test_from_environment_follows_deepfeed_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFEED_HOME", str(tmp_path / "a"))
    first = Locations.from_environment()
    monkeypatch.setenv("DEEPFEED_HOME", str(tmp_path / "b"))
    second = Locations.from_environment()
    assert first.home == (tmp_path / "a").resolve() and second.home == (tmp_path / "b").resolve()
    assert first.audit_ledger != second.audit_ledger


def test_teacher_cache_sits_beside_a_local_artifact_root_and_in_the_home_otherwise(tmp_path):
    home, root = Locations(tmp_path / "home"), tmp_path / "artifacts"
    resource = LocationsResource(home=str(home.home))
    assert resource.teacher_cache(ArtifactStore(str(root))) == home.teacher_cache(root)
    assert home.teacher_cache(root).parent == root
    remote = ArtifactStore("memory://locations-test/artifacts")
    assert not remote.is_local and resource.teacher_cache(remote).parent == home.home


def test_training_state_keys_cannot_leave_their_folder(tmp_path):
    state = Locations(tmp_path).training_state("incremental_model", "../../etc/000001-2026/x")
    assert state.is_relative_to(tmp_path / "training_state" / "incremental_model") and ".." not in state.parts[-1:]


def test_the_resource_hands_out_stores_at_those_locations(tmp_path):
    resource = LocationsResource(home=str(tmp_path))
    locations = resource.locations()
    assert locations == Locations(tmp_path.resolve())
    assert resource.audit_ledger().path == locations.audit_ledger
    assert resource.epsilon_ledger().path == locations.privacy_ledger
    assert resource.feedback_store().root == locations.feedback_root
    assert resource.inference_log().root == locations.inference_log_root
    assert resource.training_state("finetuned_model", "k") == locations.training_state("finetuned_model", "k")


def test_server_cli_and_core_defaults_agree_with_the_resource(deepfeed_env):
    """The server writes where the monitors read: the same home gives the same files."""
    expected = LocationsResource(home=str(deepfeed_env)).locations()
    settings = ServeSettings(tracking_uri="sqlite:///unused.db", home=deepfeed_env)
    assert (settings.log_root, settings.feedback_root, settings.audit_path) == (
        expected.inference_log_root,
        expected.feedback_root,
        expected.audit_ledger,
    )
    assert feedback.default_root() == expected.feedback_root
    assert inference_log.default_root() == expected.inference_log_root
    assert access.default_ledger().path == expected.audit_ledger
    assert cli_default_ledger() == expected.audit_ledger


def test_the_code_location_binds_the_resource_under_its_key():
    from deepfeed.definitions import defs

    assert isinstance(defs.resources["locations"], LocationsResource)
    assert "serving_data" not in defs.resources
