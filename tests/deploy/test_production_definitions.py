"""deploy/definitions_production.py: the same code location with the Kubernetes executor
(or the in-process one on a single server), GPU settings on the GPU steps, and the
GPU-pool tag the production run queue limits on."""

import runpy
from pathlib import Path

import pytest
import yaml

pytest.importorskip("dagster_k8s", reason="dagster-k8s is not installed (deploy/requirements-production-nodeps.txt)")

REPO = Path(__file__).resolve().parents[2]
PRODUCTION = REPO / "deploy" / "definitions_production.py"
GPU_POOL_TAG = "deepfeed/gpu-pool"


@pytest.fixture(scope="module")
def k8s_module():
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DEEPFEED_GPU_POOL", "a100-pool")
        env.setenv("DEEPFEED_GPU_NODE_SELECTOR", "cloud.example/accelerator=nvidia-a100")
        env.setenv("DEEPFEED_GPUS_PER_STEP", "2")
        env.setenv("DEEPFEED_EXECUTOR", "k8s")
        return runpy.run_path(str(PRODUCTION))


def test_same_assets_jobs_and_schedules_as_the_embedded_default(k8s_module):
    from deepfeed.definitions import defs as embedded

    defs = k8s_module["defs"]
    assert set(defs.resolve_all_asset_keys()) == set(embedded.resolve_all_asset_keys())
    assert {j.name for j in defs.jobs} == {j.name for j in embedded.jobs}
    assert {s.name for s in defs.schedules} == {s.name for s in embedded.schedules}
    assert {s.name for s in defs.sensors or []} == {s.name for s in embedded.sensors or []}
    # The embedded default itself is unchanged: one process, no pool tag.
    assert embedded.executor.name == "in_process"
    assert GPU_POOL_TAG not in embedded.resolve_job_def("full_chain_job").run_tags


def test_gpu_jobs_carry_the_pool_tag_and_their_schedules_launch_the_tagged_job(k8s_module):
    defs = k8s_module["defs"]
    full = defs.resolve_job_def("full_chain_job")
    assert full.run_tags[GPU_POOL_TAG] == "a100-pool"
    assert full.run_tags["deepfeed/stream"] == "full"  # existing tags are kept
    assert full.executor_def.name == "deepfeed_k8s_executor"
    monthly = defs.resolve_schedule_def("monthly_full_retrain")
    assert monthly.cron_schedule == "0 2 1 * *"
    assert monthly.job.run_tags[GPU_POOL_TAG] == "a100-pool"
    for job in defs.jobs:
        if not hasattr(job, "selection"):
            continue
        keys = {k.to_user_string() for k in defs.resolve_job_def(job.name).asset_layer.selected_asset_keys}
        needs_gpu = bool(keys & set(k8s_module["GPU_STEPS"]))
        assert (GPU_POOL_TAG in (job.run_tags or {})) == needs_gpu, job.name


def test_executor_config_resolves_with_gpu_nodes_for_training_steps(k8s_module, monkeypatch):
    monkeypatch.setenv("DAGSTER_K8S_NAMESPACE", "deepfeed")
    executor = k8s_module["defs"].resolve_job_def("full_chain_job").executor_def
    resolved = executor.config_schema.resolve_config({})
    assert resolved.success, resolved.errors
    config = resolved.value["config"]
    assert config["job_namespace"] == "deepfeed"
    finetune = config["per_step_k8s_config"]["finetuned_model"]
    assert finetune["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert finetune["pod_spec_config"]["node_selector"] == {"cloud.example/accelerator": "nvidia-a100"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in finetune["pod_spec_config"][
        "tolerations"
    ]
    assert "raw_corpus" not in config["per_step_k8s_config"]  # CPU steps get the default
    assert "nvidia.com/gpu" not in str(config["step_k8s_config"])


def test_single_server_keeps_the_in_process_executor_and_a_bad_choice_is_named(monkeypatch):
    monkeypatch.setenv("DEEPFEED_EXECUTOR", "in_process")
    module = runpy.run_path(str(PRODUCTION))
    full = module["defs"].resolve_job_def("full_chain_job")
    assert full.executor_def.name == "in_process" and full.run_tags[GPU_POOL_TAG] == "gpu"
    monkeypatch.setenv("DEEPFEED_EXECUTOR", "celery")
    with pytest.raises(ValueError, match="DEEPFEED_EXECUTOR='celery'"):
        runpy.run_path(str(PRODUCTION))


def test_production_instance_files_agree_on_storage_and_queue():
    """The Kubernetes and the single-server instance differ only in how runs launch."""
    k8s = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    single = yaml.safe_load((REPO / "deploy" / "dagster-single-server.yaml").read_text())
    for section in ("storage", "run_coordinator", "run_retries", "telemetry"):
        assert k8s[section] == single[section], section
    assert k8s["run_launcher"]["class"] == "K8sRunLauncher"
    # Dagster's default (a subprocess per run on this host) plus the health check run monitoring needs.
    assert single["run_launcher"] == {"module": "deepfeed.run_launcher", "class": "LocalProcessRunLauncher"}
    assert single["run_monitoring"]["enabled"] and k8s["run_monitoring"]["enabled"]
    assert k8s["storage"]["postgres"]["postgres_db"]["password"] == {"env": "DAGSTER_PG_PASSWORD"}
