"""deploy/dagster.yaml against a real PostgreSQL server, and MLflow in server mode.

Both servers run on 127.0.0.1 only and are torn down afterwards. Where PostgreSQL is not
installed the tests skip with the reason (bash .ci/services.sh installs it).
"""

import uuid
from pathlib import Path

import dagster as dg
import pytest
import yaml

from deepfeed.assets import ASSET_MODULES
from deepfeed.cli import _dagster_instance_check
from deepfeed.resources import ArtifactStoreResource, LocationsResource, MlflowResource, ModelSourceResource
from deepfeed.tools.doctor import PASS, check_mlflow
from tests.deploy.services import ServiceUnavailable, mlflow_server, postgres_server

for _module, _package in [
    ("dagster_postgres", "dagster-postgres"),
    ("dagster_k8s", "dagster-k8s"),
    ("psycopg2", "psycopg2-binary"),
]:
    pytest.importorskip(_module, reason=f"{_package} is not installed (deploy/requirements-production*.txt)")

REPO = Path(__file__).resolve().parents[2]
PRODUCTION_YAML = REPO / "deploy" / "dagster.yaml"
SLICE = ["raw_corpus", "clean_corpus", "augmented_corpus", "base_model", "finetuned_model"]
TRAIN_STEPS = 3
# What the Kubernetes run launcher reads; nothing contacts a cluster while runs execute
# in process, but the instance must accept them as configured.
K8S_ENV = {
    "DAGSTER_K8S_NAMESPACE": "deepfeed",
    "DAGSTER_K8S_INSTANCE_CONFIG_MAP": "dagster-instance",
    "DAGSTER_K8S_PG_PASSWORD_SECRET": "dagster-postgresql-secret",
    "DAGSTER_K8S_SERVICE_ACCOUNT": "dagster",
    "DAGSTER_MAX_CONCURRENT_RUNS": "10",
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres():
    try:
        with postgres_server() as server:
            yield server
    except ServiceUnavailable as exc:
        pytest.skip(f"PostgreSQL cannot be started here: {exc}")


KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: none, user: {token: none}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
"""


@pytest.fixture
def production_home(deepfeed_env, postgres, monkeypatch) -> Path:
    """A DAGSTER_HOME holding deploy/dagster.yaml, its variables set.

    One change: the Kubernetes launcher reads a kubeconfig (pointing at a closed loopback
    port, never contacted) instead of the in-cluster service account, which exists only
    inside a pod. Everything else is the file as shipped.
    """
    home = deepfeed_env / "dagster"
    config = yaml.safe_load(PRODUCTION_YAML.read_text())
    (home / "kubeconfig").write_text(KUBECONFIG)
    config["run_launcher"]["config"].update(load_incluster_config=False, kubeconfig_file=str(home / "kubeconfig"))
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    for name, value in {**postgres.env(), **K8S_ENV, "DAGSTER_HOME": str(home)}.items():
        monkeypatch.setenv(name, value)
    return home


def _run_rows(postgres) -> list[tuple[str, str]]:
    import psycopg2

    with psycopg2.connect(postgres.url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT run_id, status FROM runs")
        return cursor.fetchall()


def test_production_instance_stores_runs_in_postgres_and_logs_to_an_mlflow_server(
    production_home, postgres, deepfeed_env, tiny_llama, tiny_corpus, tmp_path
):
    with dg.DagsterInstance.from_config(str(production_home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        coordinator = instance.run_coordinator
        assert type(coordinator).__name__ == "QueuedRunCoordinator"
        limits = coordinator.get_run_queue_config().tag_concurrency_limits
        assert {"key": "deepfeed/gpu-pool", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits
        assert coordinator.get_run_queue_config().max_concurrent_runs == 10
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert type(instance.run_launcher).__name__ == "K8sRunLauncher"
        assert instance.run_launcher.job_namespace == "deepfeed"

        # An MLflow server's registry refuses a model version whose source is a local path
        # (a checkpoint on one machine's disk means nothing to the others), so server mode
        # needs an object-store artifact root (s3://… in production). No S3 server installs
        # from the registries here; fsspec's in-process memory:// filesystem is the remote
        # root that takes the same code path (staging, upload, URI as the source).
        artifact_root = f"memory://deepfeed-{uuid.uuid4().hex[:8]}/artifacts"
        with mlflow_server(tmp_path / "mlflow-server") as tracking_uri:
            # No artifact_location: the experiment takes the server's artifact root, so
            # artifacts go through the server, as they do from a pod without the volume.
            mlflow = MlflowResource(tracking_uri=tracking_uri, artifact_location="")
            assets = [*dg.load_assets_from_modules(ASSET_MODULES), *dg.load_asset_checks_from_modules(ASSET_MODULES)]
            chain_resources = {
                "artifact_store": ArtifactStoreResource(root=artifact_root),
                "mlflow": mlflow,
                "model_source": ModelSourceResource(base_model_path=str(tiny_llama)),
                "locations": LocationsResource(home=str(tmp_path / "home")),
            }
            # The tiny corpus's files lie in its root: one source, one partition (the dynamic
            # partitions live in Postgres too).
            instance.add_dynamic_partitions("corpus_source", ["_root"])
            raw_run = dg.materialize(
                assets,
                selection=["raw_corpus"],
                partition_key="_root",
                resources=chain_resources,
                instance=instance,
                run_config={"ops": {"raw_corpus": {"config": {"corpus_path": str(tiny_corpus)}}}},
            )
            assert raw_run.success
            result = dg.materialize(
                assets,
                selection=SLICE[1:],
                resources=chain_resources,
                run_config={
                    "ops": {
                        # WordNet synonyms are the slow part of augmentation and not what this tests.
                        "augmented_corpus": {"config": {"synonym_ratio": 0.0}},
                        "finetuned_model": {"config": {"max_steps": TRAIN_STEPS, "batch_size": 4, "max_length": 64}},
                    }
                },
                instance=instance,
            )
            assert result.success

            client = mlflow.client()
            experiment = client.get_experiment_by_name("deepfeed")
            assert experiment.artifact_location.startswith("mlflow-artifacts:")
            runs = client.search_runs(
                [experiment.experiment_id], filter_string=f"tags.dagster_run_id = '{result.run_id}'"
            )
            assert len(runs) == 1
            run = runs[0]
            assert "train_final_loss" in run.data.metrics
            assert len(client.get_metric_history(run.info.run_id, "train_loss")) == TRAIN_STEPS
            # Registered without an alias: only a passed evaluation gate makes a version servable.
            [version] = [
                v
                for v in client.search_model_versions("name='deepfeed'")
                if v.tags.get("dagster_run_id") == result.run_id
            ]
            assert not version.aliases
            assert version.source.startswith(artifact_root + "/finetuned_model/")
            logged = {a.path for a in client.list_artifacts(run.info.run_id, "finetuned_model")}
            assert "finetuned_model/training.json" in logged

            # `deepfeed doctor` sees the same server and the Postgres-backed instance.
            assert check_mlflow(tracking_uri).status == PASS
            instance_check = _dagster_instance_check()
            assert instance_check.status == PASS, instance_check.detail
            assert "PostgresRunStorage" in instance_check.detail and "K8sRunLauncher" in instance_check.detail
        # The server kept the artifact on its own root and the runs in its database.
        assert list((tmp_path / "mlflow-server" / "artifacts").rglob("training.json"))
        assert (tmp_path / "mlflow-server" / "mlflow.db").stat().st_size > 0
        assert not (deepfeed_env / "mlflow.db").exists()

    # A fresh instance from the same file reads everything back out of Postgres.
    assert (result.run_id, "SUCCESS") in _run_rows(postgres) and (raw_run.run_id, "SUCCESS") in _run_rows(postgres)
    with dg.DagsterInstance.from_config(str(production_home)) as reopened:
        record = reopened.get_run_record_by_id(result.run_id)
        assert record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
        for key in SLICE:
            event = reopened.get_latest_materialization_event(dg.AssetKey(key))
            assert event is not None and event.run_id == (raw_run if key == "raw_corpus" else result).run_id, key
        finetuned = reopened.get_latest_materialization_event(dg.AssetKey("finetuned_model")).asset_materialization
        assert finetuned.metadata["mlflow_model_version"].value == str(version.version)
        raw = reopened.get_latest_materialization_event(dg.AssetKey("raw_corpus")).asset_materialization
        assert raw.metadata["quarantined"].value == 4


def test_definitions_validate_with_the_production_instance_and_k8s_executor(production_home, monkeypatch):
    """`dagster definitions validate` loads deploy/dagster.yaml (so Postgres) and the
    code location with the k8s executor; no cluster is needed to validate.

    The `dagster` script's own click command, run in this process: a subprocess would
    re-import torch and Dagster first (about 25 s on two cores).
    """
    from click.testing import CliRunner
    from dagster._cli import cli as dagster_cli  # what the `dagster` console script runs

    monkeypatch.setenv("DEEPFEED_EXECUTOR", "k8s")
    monkeypatch.chdir(REPO)
    done = CliRunner().invoke(
        dagster_cli, ["definitions", "validate", "-f", str(REPO / "deploy" / "definitions_production.py")]
    )
    assert done.exit_code == 0, done.output[-3000:]
    assert "Validation successful for code location definitions_production.py" in done.output


def test_queue_lets_one_training_run_per_gpu_pool_out(production_home, monkeypatch):
    """The production queue's tag limit applied by Dagster's own counter (the one its
    run-queue daemon uses) to runs stored in Postgres with the tags the production code
    location gives its GPU jobs."""
    import runpy

    from dagster._utils.tags import TagConcurrencyLimitsCounter  # the daemon's limit logic

    monkeypatch.setenv("DEEPFEED_EXECUTOR", "in_process")
    monkeypatch.setenv("DEEPFEED_GPU_POOL", "pool-a")
    defs = runpy.run_path(str(REPO / "deploy" / "definitions_production.py"))["defs"]
    pool_a = dict(defs.resolve_job_def("full_chain_job").run_tags)
    pool_b = {**pool_a, "deepfeed/gpu-pool": "pool-b"}
    monitoring = dict(defs.resolve_job_def("drift_report_job").run_tags)

    with dg.DagsterInstance.from_config(str(production_home)) as instance:

        def add(status, tags):
            run = dg.DagsterRun(job_name="full_chain_job", run_id=str(uuid.uuid4()), status=status, tags=tags)
            instance.add_run(run)
            return run.run_id

        add(dg.DagsterRunStatus.STARTED, pool_a)
        # Waiting runs: stored NOT_STARTED, since a QUEUED run needs a code-server origin.
        queued = {
            name: add(dg.DagsterRunStatus.NOT_STARTED, tags)
            for name, tags in [("pool-a", pool_a), ("pool-b", pool_b), ("monitoring", monitoring)]
        }
        limits = instance.run_coordinator.get_run_queue_config().tag_concurrency_limits
        in_progress = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        counter = TagConcurrencyLimitsCounter(limits, list(in_progress))
        blocked = {name: counter.is_blocked(instance.get_run_by_id(run_id)) for name, run_id in queued.items()}
    assert blocked == {"pool-a": True, "pool-b": False, "monitoring": False}
