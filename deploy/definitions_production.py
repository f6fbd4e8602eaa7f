"""The deepfeed code location for production: the same assets, jobs, schedules and
sensors as deepfeed.definitions, with

- every job that runs a GPU step tagged `deepfeed/gpu-pool=$DEEPFEED_GPU_POOL`, which the
  production run queue (deploy/dagster.yaml) limits to one run per pool;
- the executor chosen by DEEPFEED_EXECUTOR: `k8s` (default here: one pod per step, GPU
  steps on GPU nodes) or `in_process` (one GPU server, as the embedded default).

Load it with `dagster ... -f deploy/definitions_production.py` (the Helm values do).
deepfeed.definitions, the embedded default, is not changed by any of this.

Per-step Kubernetes settings are given through the executor's per_step_k8s_config
rather than as `dagster-k8s/config` op tags on the assets, so the asset code stays the
same on a laptop and in the cluster. An asset that sets that op tag itself still wins
for the fields it sets (dagster-k8s merges op tags over the executor's config).
"""

import os

import dagster as dg

# Imported as a module: Dagster refuses a file with two Definitions objects at module scope.
from deepfeed import definitions as embedded

GPU_POOL_TAG = "deepfeed/gpu-pool"
# Steps that run a model forward/backward pass and need a GPU node.
GPU_STEPS = ("finetuned_model", "incremental_model", "compressed_model", "evaluation_report")
EXECUTORS = ("k8s", "in_process")


def gpu_step_k8s_config() -> dict:
    gpus = os.environ.get("DEEPFEED_GPUS_PER_STEP", "1")
    node_label, _, node_value = os.environ.get("DEEPFEED_GPU_NODE_SELECTOR", "nvidia.com/gpu.present=true").partition(
        "="
    )
    return {
        "container_config": {
            "resources": {
                "requests": {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": gpus},
                "limits": {"memory": "64Gi", "nvidia.com/gpu": gpus},
            },
        },
        "pod_spec_config": {
            "node_selector": {node_label: node_value},
            # GPU node pools are usually tainted so that only GPU work lands there.
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }


CPU_STEP_K8S_CONFIG = {
    "container_config": {
        "resources": {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "16Gi"}},
    },
}


def k8s_executor() -> dg.ExecutorDefinition:
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor.configured(
        {
            "job_namespace": {"env": "DAGSTER_K8S_NAMESPACE"},
            "env_secrets": ["deepfeed-secrets"],
            "env_vars": [
                "DEEPFEED_ARTIFACT_ROOT",
                "DEEPFEED_BASE_MODEL",
                "DEEPFEED_CORPUS",
                "MLFLOW_TRACKING_URI",
                "HF_HUB_OFFLINE=1",
                "TRANSFORMERS_OFFLINE=1",
            ],
            # Steps of one run that may overlap (corpus cleaning beside base_model) do;
            # the GPU steps depend on each other, so they never compete for the card.
            "max_concurrent": 4,
            "step_k8s_config": CPU_STEP_K8S_CONFIG,
            "per_step_k8s_config": {step: gpu_step_k8s_config() for step in GPU_STEPS},
        },
        name="deepfeed_k8s_executor",
    )


def executor_from_env() -> dg.ExecutorDefinition:
    choice = os.environ.get("DEEPFEED_EXECUTOR", "k8s")
    if choice not in EXECUTORS:
        raise ValueError(f"DEEPFEED_EXECUTOR={choice!r}: expected one of {', '.join(EXECUTORS)}")
    return k8s_executor() if choice == "k8s" else dg.in_process_executor


def with_gpu_pool(jobs, schedules, sensors, asset_graph, pool: str):
    """Tag every job that runs a GPU step with the pool, and re-point the schedules and
    sensors that start those jobs at the tagged copies (Dagster rejects two different
    jobs of one name in a code location)."""
    tagged = {}
    for job in jobs:
        if not hasattr(job, "selection"):
            continue  # an op job (e.g. the rollback): it moves aliases, it needs no GPU
        selected = {key.to_user_string() for key in job.selection.resolve(asset_graph)}
        if selected & set(GPU_STEPS):
            # A copy through the public constructor: same selection, config, partitions.
            tagged[job.name] = dg.define_asset_job(
                job.name,
                selection=job.selection,
                config=job.config,
                description=job.description,
                tags={**(job.tags or {}), GPU_POOL_TAG: pool},
                run_tags={**(job.run_tags or job.tags or {}), GPU_POOL_TAG: pool},
                metadata=job.metadata,
                partitions_def=job.partitions_def,
                executor_def=job.executor_def,
                hooks=job.hooks,
                op_retry_policy=job.op_retry_policy,
                owners=job.owners,
                automation_condition=job.automation_condition,
            )
    new_jobs = [tagged.get(job.name, job) for job in jobs]
    new_schedules = [s.with_updated_job(tagged[s.job_name]) if s.job_name in tagged else s for s in schedules]
    new_sensors = [
        s.with_updated_jobs([tagged.get(j.name, j) for j in s.jobs])
        if s.has_jobs and any(j.name in tagged for j in s.jobs)
        else s
        for s in sensors
    ]
    return new_jobs, new_schedules, new_sensors


jobs, schedules, sensors = with_gpu_pool(
    list(embedded.defs.jobs or []),
    list(embedded.defs.schedules or []),
    list(embedded.defs.sensors or []),
    embedded.defs.resolve_asset_graph(),
    os.environ.get("DEEPFEED_GPU_POOL", "gpu"),
)

defs = dg.Definitions(
    assets=embedded.defs.assets,
    asset_checks=embedded.defs.asset_checks,
    jobs=jobs,
    schedules=schedules,
    sensors=sensors,
    resources=embedded.defs.resources,
    executor=executor_from_env(),
)
