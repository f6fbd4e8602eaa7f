"""The closed loop, for real and bounded: a uvicorn server on loopback, traffic (some of it
shifted), feedback, the sensors' evaluations, the jobs they trigger on a tiny model, and the
server following every alias move: new challenger, A/B promotion, rollback."""

from __future__ import annotations

import time

import dagster as dg
import httpx

from deepfeed.assets.incremental import incremental_model
from deepfeed.assets.monitoring import ab_test_report, drift_report
from deepfeed.core.loop.lifecycle import grant_challenger
from deepfeed.core.platform.audit import AuditLedger
from deepfeed.pipelines.presets import TEST_INCREMENTAL_MINIMAL
from deepfeed.pipelines.rollback import rollback_job
from deepfeed.resources import ArtifactStoreResource, MlflowResource, ModelSourceResource
from deepfeed.resources.locations import LocationsResource
from deepfeed.resources.monitoring_policy import MonitoringPolicyResource
from deepfeed.sensors.drift import drift_sensor
from deepfeed.sensors.feedback import feedback_sensor
from deepfeed.sensors.performance import performance_sensor
from deepfeed.serve.app import ServeSettings
from deepfeed.serve.process import ServerProcess
from tests.sensors.test_sensors import EN, _reference_corpus
from tests.serve.conftest import KEYS, Registry

INCREMENTAL = TEST_INCREMENTAL_MINIMAL


def _wait_for(server: ServerProcess, versions: dict, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if httpx.get(f"{server.url}/health").json()["versions"] == versions:
            return
        time.sleep(0.2)
    raise AssertionError(f"server never served {versions}: {httpx.get(f'{server.url}/health').json()}")


def test_closed_loop_on_loopback(deepfeed_env, empty_registry_db, tiny_llama, policy_file):
    home = deepfeed_env
    registry = Registry(home, empty_registry_db)
    v1 = registry.register(tiny_llama, "champion")
    _reference_corpus(home)
    resources = {
        "artifact_store": ArtifactStoreResource(root=str(home / "artifacts")),
        "mlflow": MlflowResource(tracking_uri=registry.uri, artifact_location=str(home / "mlartifacts")),
        "model_source": ModelSourceResource(base_model_path=str(tiny_llama)),
        "locations": LocationsResource(home=str(home)),
        "monitoring_policy": MonitoringPolicyResource(
            drift_window_hours=1,
            drift_min_samples=20,
            feedback_min_batch=5,
            rollback_window=12,
            rollback_min_samples=12,
        ),
    }
    settings = ServeSettings(
        tracking_uri=registry.uri,
        max_new_tokens=2,
        poll_seconds=0.3,
        policy_path=policy_file,
        home=home,
        rate_burst=10_000,
    )
    annotator = {"X-API-Key": KEYS["annotator"]}
    client_key = {"X-API-Key": KEYS["client"]}

    with (
        ServerProcess(settings) as server,
        httpx.Client(base_url=server.url, timeout=60) as http,
        dg.instance_for_test(temp_dir=str(home / "dagster")) as instance,
    ):

        def ask(user: str, prompt: str) -> dict:
            r = http.post("/generate", json={"user_id": user, "prompt": prompt}, headers=client_key)
            assert r.status_code == 200, r.text
            return r.json()

        def rate(answer: dict, user: str, rating: float, correction: str | None = None) -> None:
            r = http.post(
                "/feedback",
                headers=annotator,
                json={
                    "prompt": "asked",
                    "answer": answer["answer"] or "-",
                    "correction": correction,
                    "rating": rating,
                    "user_id": user,
                    "request_id": answer["request_id"],
                    "classification": "internal",
                },
            )
            assert r.status_code == 200, r.text

        # 1. Traffic like the training data, then a shifted distribution; corrections.
        for i in range(20):
            answer = ask(f"user{i % 10}", EN[i % len(EN)] + f" ({i})")
            assert answer["model_version"] == v1
            if i < 8:
                rate(answer, f"user{i % 10}", 0.0, correction="The capital of France is Paris.")
        for i in range(25):
            ask(f"user{i % 10}", f"请问订单{i}的发货时间是什么时候？我已经等了{i * 3}天了。")

        # 2. Drift: the shifted prompts trip the KS tests; the report run fails with the evidence.
        with dg.build_sensor_context(resources=resources) as context:
            drift = drift_sensor(context)
        [drift_request] = drift
        drift_run = dg.materialize(
            [drift_report],
            instance=instance,
            resources=resources,
            raise_on_error=False,
            run_config=drift_request.run_config,
        )
        assert not drift_run.success
        assert "drift alert" in drift_run.failure_data_for_node("drift_report").error.message

        # 3. Feedback sensor: a sealed batch, a partition, an incremental run -> v2 challenger.
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            feedback = feedback_sensor(context)
        [request] = feedback.run_requests
        instance.add_dynamic_partitions("feedback_batches", [request.partition_key])
        trained = dg.materialize(
            [incremental_model],
            partition_key=request.partition_key,
            instance=instance,
            resources=resources,
            run_config={
                "ops": {"incremental_model": {"config": {**INCREMENTAL, "feedback_root": str(home / "feedback")}}}
            },
        )
        assert trained.success
        v2 = str(trained.asset_materializations_for_node("incremental_model")[0].metadata["mlflow_model_version"].value)
        assert v2 != v1
        # Registered, not evaluated: it serves nobody.
        assert {ask(f"user{i}", "hello")["model_version"] for i in range(10)} == {v1}
        # Its gate passes (incremental_job's compression + evaluation + gate on a real corpus is
        # tests/dagster/test_training_streams.py): champion_model's move makes it the challenger.
        grant_challenger(registry.client, "deepfeed", v2, "evaluation_report", v1, "passed the gate", "loop-test")
        _wait_for(server, {"champion": v1, "challenger": v2})

        # 4. A/B: the challenger's users are happier; the report promotes it.
        for i in range(16):
            user = f"ab-user{i}"
            answer = ask(user, EN[i % len(EN)])
            for k in range(2):
                rate(answer, user, (0.9 if answer["arm"] == "challenger" else 0.5) + 0.02 * ((i + k) % 3))
        report = dg.materialize(
            [ab_test_report],
            instance=instance,
            resources=resources,
            run_config={
                "ops": {
                    "ab_test_report": {"config": {"min_hours": 0, "min_users_per_arm": 4, "serving_home": str(home)}}
                }
            },
        )
        [mat] = report.asset_materializations_for_node("ab_test_report")
        assert mat.metadata["decision"].value == "promote", mat.metadata["reason"].value
        _wait_for(server, {"champion": v2})
        assert {ask(f"user{i}", "hello")["model_version"] for i in range(5)} == {v2}

        # 5. The new champion's ratings fall >= 3% below its A/B level: rollback.
        for i in range(12):
            rate(ask(f"late{i}", EN[i % len(EN)]), f"late{i}", 0.4)
        with dg.build_sensor_context(resources=resources) as context:
            rollback = performance_sensor(context)
        assert isinstance(rollback, dg.RunRequest), rollback
        result = rollback_job.execute_in_process(run_config=rollback.run_config, resources=resources, instance=instance)
        assert result.success
        _wait_for(server, {"champion": v1})
        assert ask("after", "hello")["model_version"] == v1

    ledger = AuditLedger(home / "audit" / "ledger.jsonl")
    assert [e["action"] for e in ledger.iter_entries() if e["action"] in ("promoted", "rolled_back")] == [
        "promoted",
        "rolled_back",
    ]
    assert ledger.verify().ok
