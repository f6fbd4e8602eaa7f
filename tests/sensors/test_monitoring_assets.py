"""drift_report and ab_test_report materialized on synthetic production data."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import numpy as np

from deepfeed.assets import monitoring
from deepfeed.core.loop.abtest import arm_for_hash, hash_user_id
from deepfeed.core.platform.audit import AuditLedger
from deepfeed.resources import ArtifactStoreResource, LocationsResource, MlflowResource
from tests.sensors.test_sensors import EN, _log, _reference_corpus
from tests.serve.conftest import Registry

UTC = dt.timezone.utc
ASSETS = dg.load_assets_from_modules([monitoring])


def _materialize(home, name, config, mlflow_uri="sqlite:///unused.db"):
    with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
        return dg.materialize(
            ASSETS,
            selection=name,
            instance=instance,
            raise_on_error=False,
            resources={
                "artifact_store": ArtifactStoreResource(root=str(home / "artifacts")),
                "mlflow": MlflowResource(tracking_uri=mlflow_uri, artifact_location=str(home / "mlart")),
                "locations": LocationsResource(home=str(home)),
            },
            run_config={"ops": {name: {"config": {"serving_home": str(home), **config}}}},
        )


def test_drift_report_passes_quietly_and_fails_with_evidence_on_drift(deepfeed_env):
    store = _reference_corpus(deepfeed_env)
    rng = np.random.default_rng(0)
    _log(deepfeed_env, [EN[i % len(EN)] + f" ({i})" for i in range(60)], rng.normal(0.6, 0.05, 60))
    quiet = _materialize(deepfeed_env, "drift_report", {"window_hours": 2})
    assert quiet.success
    [mat] = quiet.asset_materializations_for_node("drift_report")
    assert mat.metadata["alert"].value is False and "features" in mat.metadata

    _log(deepfeed_env, [f"订单{i}号什么时候发货？已经等了{i}天。" for i in range(100)], rng.normal(0.6, 0.05, 100))
    alert = _materialize(deepfeed_env, "drift_report", {"window_hours": 2})
    assert not alert.success
    failure = alert.failure_data_for_node("drift_report").error.message
    assert "drift alert" in failure and "cjk_share" in failure
    latest = store.latest("drift_report")
    evidence = json.loads((store.local_path(latest) / "drift.json").read_text())
    assert evidence["input_alert"] and evidence["requests"] == 160


def _ab_feedback(home, versions, effect, users=40, hours=80):
    """Ratings spread over `hours`, per user, in the arm the hash assigns."""
    rng = np.random.default_rng(3)
    start = dt.datetime.now(UTC) - dt.timedelta(hours=hours)
    lines = []
    for u in range(users * 2):
        user_hash = hash_user_id(f"user{u}", "test-salt-0123456789")
        arm = arm_for_hash(user_hash, 0.5)
        for k in range(4):
            rating = float(np.clip(rng.normal(0.6 + (effect if arm == "challenger" else 0), 0.1), 0, 1))
            lines.append(
                {
                    "feedback_id": f"{u}-{k}",
                    "received_at": (start + dt.timedelta(hours=hours * k / 3)).isoformat(),
                    "prompt": "q",
                    "answer": "a",
                    "correction": None,
                    "rating": rating,
                    "tags": [],
                    "lang": None,
                    "user_hash": user_hash,
                    "model_version": versions[arm],
                    "arm": arm,
                    "classification": "public",
                    "role": "annotator",
                }
            )
    (home / "feedback").mkdir(exist_ok=True)
    (home / "feedback" / "open.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_ab_test_report_promotes_a_better_challenger(deepfeed_env, empty_registry_db, tiny_llama):
    registry = Registry(deepfeed_env, empty_registry_db)
    versions = {
        "champion": registry.register(tiny_llama, "champion"),
        "challenger": registry.register(tiny_llama, "challenger"),
    }
    _ab_feedback(deepfeed_env, versions, effect=0.15)
    result = _materialize(deepfeed_env, "ab_test_report", {"split": 0.5}, registry.uri)
    assert result.success
    [mat] = result.asset_materializations_for_node("ab_test_report")
    assert mat.metadata["decision"].value == "promote" and mat.metadata["p_value"].value < 0.01
    client = registry.client
    assert str(client.get_model_version_by_alias("deepfeed", "champion").version) == versions["challenger"]
    assert str(client.get_model_version_by_alias("deepfeed", "previous").version) == versions["champion"]
    tags = client.get_model_version("deepfeed", versions["challenger"]).tags
    assert tags["ab_decision"] == "promote" and 0.7 < float(tags["deepfeed.baseline_metric"]) < 0.8
    [entry] = list(AuditLedger(deepfeed_env / "audit" / "ledger.jsonl").iter_entries(action="promoted"))
    assert entry["stage"] == "model_registry" and entry["extra"]["move"] == "champion_promoted"


def test_ab_test_report_without_effect_or_time_decides_nothing(deepfeed_env, empty_registry_db, tiny_llama):
    registry = Registry(deepfeed_env, empty_registry_db)
    versions = {
        "champion": registry.register(tiny_llama, "champion"),
        "challenger": registry.register(tiny_llama, "challenger"),
    }
    _ab_feedback(deepfeed_env, versions, effect=0.15, hours=24)
    result = _materialize(deepfeed_env, "ab_test_report", {}, registry.uri)
    [mat] = result.asset_materializations_for_node("ab_test_report")
    assert mat.metadata["decision"].value == "insufficient_duration"
    assert str(registry.client.get_model_version_by_alias("deepfeed", "champion").version) == versions["champion"]
    registry.delete_alias("challenger")
    missing = _materialize(deepfeed_env, "ab_test_report", {}, registry.uri)
    assert (
        not missing.success
        and "no A/B test is running" in missing.failure_data_for_node("ab_test_report").error.message
    )
