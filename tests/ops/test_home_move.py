"""A moved DEEPFEED_HOME serves models:/deepfeed@champion from its new place and writes
nothing into the old one; a copied home leaves its original untouched."""

import shutil

import mlflow
import pytest

from deepfeed.core.platform.home_move import MARKER, settle_home
from deepfeed.core.platform.mlflow_model import write_pyfunc_model
from deepfeed.resources import MlflowResource


def _home_with_a_champion(home, tiny_llama):
    checkpoint = home / "artifacts" / "finetuned_model" / "v1" / "checkpoint"
    shutil.copytree(tiny_llama, checkpoint)
    write_pyfunc_model(checkpoint)
    resource = MlflowResource(
        tracking_uri=f"sqlite:///{home / 'mlflow.db'}", artifact_location=str(home / "mlartifacts")
    )
    client = resource.client()  # records where the home is
    experiment = resource._experiment_id(client)
    run = client.create_run(experiment)
    client.create_registered_model("deepfeed")
    version = client.create_model_version("deepfeed", source=str(checkpoint), run_id=run.info.run_id)
    client.set_registered_model_alias("deepfeed", "champion", version.version)
    client.set_terminated(run.info.run_id)
    return resource


def _move(old, new, monkeypatch):
    shutil.move(str(old), str(new))
    uri = f"sqlite:///{new / 'mlflow.db'}"
    monkeypatch.setenv("DEEPFEED_HOME", str(new))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return MlflowResource(tracking_uri=uri, artifact_location=str(new / "mlartifacts"))


def test_a_moved_home_loads_its_champion_and_writes_only_to_itself(tiny_llama, tmp_path, monkeypatch):
    old, new = tmp_path / "old-home", tmp_path / "new-home"
    monkeypatch.setenv("DEEPFEED_HOME", str(old))
    _home_with_a_champion(old, tiny_llama)
    assert (old / MARKER).exists()

    client = _move(old, new, monkeypatch).client()  # what every deepfeed step does first
    champion = client.get_model_version_by_alias("deepfeed", "champion")
    assert champion.source == str(new / "artifacts" / "finetuned_model" / "v1" / "checkpoint")
    model = mlflow.pyfunc.load_model("models:/deepfeed@champion")
    answers = model.predict({"prompt": ["hello"]}, params={"max_new_tokens": 3})
    assert len(answers) == 1 and isinstance(answers[0], str)

    experiment = client.get_experiment_by_name("deepfeed")
    assert experiment.artifact_location.startswith(str(new))
    run = client.create_run(experiment.experiment_id)
    client.log_text(run.info.run_id, "after the move", "note.txt")
    assert list(new.glob("mlartifacts/**/note.txt"))
    assert not old.exists()  # nothing recreated the old home
    assert settle_home(new, f"sqlite:///{new / 'mlflow.db'}") == 0  # settled once


def test_a_copied_home_leaves_the_original_pointing_at_itself(tiny_llama, tmp_path, monkeypatch):
    original, copy = tmp_path / "home", tmp_path / "copy"
    monkeypatch.setenv("DEEPFEED_HOME", str(original))
    _home_with_a_champion(original, tiny_llama)
    shutil.copytree(original, copy)
    monkeypatch.setenv("DEEPFEED_HOME", str(copy))
    assert settle_home(copy, f"sqlite:///{copy / 'mlflow.db'}") >= 3
    from mlflow import MlflowClient

    copied = MlflowClient(f"sqlite:///{copy / 'mlflow.db'}").get_model_version_by_alias("deepfeed", "champion")
    kept = MlflowClient(f"sqlite:///{original / 'mlflow.db'}").get_model_version_by_alias("deepfeed", "champion")
    assert copied.source.startswith(str(copy)) and kept.source.startswith(str(original) + "/")


def test_a_broken_marker_is_a_clear_error(tmp_path):
    (tmp_path / MARKER).write_text("{not json")
    with pytest.raises(ValueError, match="is not a deepfeed home marker"):
        settle_home(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
