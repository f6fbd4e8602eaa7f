"""Multi-node training manifests, rendered without a cluster: N pods that all rendezvous at
node 0 through a headless service, node 0 built by the Kubernetes Pipes client's own pod
builder, and every command read back by torchrun's own argument parser."""

from pathlib import Path

import pytest
from torch.distributed.run import get_args_parser

from deepfeed.core.train.distributed import launch_command
from deepfeed.core.train.k8s_training import CONTAINER, JOB_LABEL, MultiNodeJob, run_multinode

dagster_k8s_pipes = pytest.importorskip("dagster_k8s.pipes", reason="dagster-k8s is not installed")
kubernetes = pytest.importorskip("kubernetes")

SPEC = Path("/shared/jobs/ft-1/spec.json")


def _job(**overrides) -> MultiNodeJob:
    settings = dict(
        name="ft-1",
        image="registry.local/deepfeed:cuda",
        spec=SPEC,
        nnodes=3,
        nproc_per_node=4,
        namespace="training",
        gpus_per_node=4,
        shared_claim="deepfeed-shared",
    )
    return MultiNodeJob(**{**settings, **overrides})


def _torchrun_args(command: list[str]):
    assert command[1:3] == ["-m", "torch.distributed.run"]
    return get_args_parser().parse_args(command[3:])


def _node0_pod(job: MultiNodeJob) -> dict:
    """What PipesK8sClient.run submits for node 0, as the API server receives it."""
    pod = dagster_k8s_pipes.build_pod_body(
        pod_name="dagster-run-abc-train",
        image=job.image,
        command=job.command(0),
        env_vars={"DAGSTER_PIPES_CONTEXT": "ctx", "DAGSTER_PIPES_MESSAGES": "msgs"},
        base_pod_meta=job.pod_meta(0),
        base_pod_spec=job.pod_spec(0),
    )
    return kubernetes.client.ApiClient().sanitize_for_serialization(pod)


def test_every_node_runs_torchrun_with_the_same_rendezvous_and_its_own_rank():
    job = _job()
    pods = [_node0_pod(job)] + [job.worker_pod_manifest(rank) for rank in range(1, job.nnodes)]
    assert len(pods) == 3
    parsed = [_torchrun_args(pod["spec"]["containers"][0]["command"]) for pod in pods]
    endpoint = "ft-1-0.ft-1-rdzv.training.svc.cluster.local:29400"
    for rank, args in enumerate(parsed):
        assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("3", rank, "4")
        assert (args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id) == ("c10d", endpoint, "ft-1")
        assert not args.standalone and args.module
        assert args.training_script == "deepfeed.core.train.distributed"
        assert args.training_script_args == [str(SPEC)]
    assert job.world_size == 12
    # The image's interpreter, not the Dagster process's.
    assert {pod["spec"]["containers"][0]["command"][0] for pod in pods} == {"python"}


def test_the_headless_service_gives_node_0_the_endpoint_s_name():
    job = _job()
    service = job.service_manifest()
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert service["spec"]["ports"][0]["port"] == 29400
    pods = [_node0_pod(job)] + [job.worker_pod_manifest(rank) for rank in range(1, job.nnodes)]
    for rank, pod in enumerate(pods):
        # Selected by the service, and named <hostname>.<subdomain> in its DNS zone.
        labels = pod["metadata"]["labels"]
        assert all(labels[k] == v for k, v in service["spec"]["selector"].items())
        assert pod["spec"]["subdomain"] == service["metadata"]["name"]
        assert pod["spec"]["hostname"] == f"ft-1-{rank}"
        assert pod["spec"]["restartPolicy"] == "Never"
        container = pod["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
        assert container["volumeMounts"] == [{"name": "shared", "mountPath": "/shared"}]
        assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "deepfeed-shared"
    host = job.rendezvous_endpoint.split(":")[0]
    assert host == f"{pods[0]['spec']['hostname']}.{service['metadata']['name']}.training.svc.cluster.local"
    # Only node 0 talks to Dagster: the Pipes bootstrap variables are on its pod alone.
    node0_env = {e["name"] for e in pods[0]["spec"]["containers"][0]["env"]}
    assert "DAGSTER_PIPES_CONTEXT" in node0_env and "env" not in pods[1]["spec"]["containers"][0]
    assert pods[0]["spec"]["containers"][0]["name"] == CONTAINER


def test_one_node_stays_standalone_and_bad_jobs_are_refused():
    args = _torchrun_args(launch_command(SPEC, 2))
    assert args.standalone and args.nnodes == "1:1"
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        launch_command(SPEC, 2, nnodes=2)
    with pytest.raises(ValueError, match="node_rank=2"):
        launch_command(SPEC, 2, nnodes=2, node_rank=2, rdzv_endpoint="h:1")
    with pytest.raises(ValueError, match="DNS-1123"):
        _job(name="FT_1")
    with pytest.raises(ValueError, match="nnodes=1"):
        _job(nnodes=1)
    with pytest.raises(ValueError, match="shared mount"):
        _job(spec=Path("/tmp/spec.json"))
    with pytest.raises(ValueError, match="node 0 runs through the Pipes client"):
        _job().worker_pod_manifest(0)
    assert "volumes" not in _job(shared_claim=None, spec=Path("/data/spec.json")).pod_spec(1)


class _Recorder:
    """Records the Kubernetes calls in order; the Pipes client's run can fail on demand."""

    def __init__(self, fail: bool = False):
        self.calls: list[tuple] = []
        self.fail = fail

    def create_namespaced_service(self, namespace, body):
        self.calls.append(("create service", body["metadata"]["name"]))

    def create_namespaced_pod(self, namespace, body):
        self.calls.append(("create pod", body["metadata"]["name"]))

    def delete_namespaced_pod(self, name, namespace):
        self.calls.append(("delete pod", name))

    def delete_namespaced_service(self, name, namespace):
        self.calls.append(("delete service", name))

    def run(self, **kwargs):
        self.calls.append(("pipes node 0", kwargs["base_pod_spec"]["hostname"]))
        if self.fail:
            raise RuntimeError("node 0 failed")
        return "completed"


@pytest.mark.parametrize("fail", [False, True])
def test_the_service_and_the_other_nodes_exist_before_node_0_and_are_removed_after(fail):
    recorder = _Recorder(fail)
    job = _job()
    if fail:
        with pytest.raises(RuntimeError, match="node 0 failed"):
            run_multinode(job, recorder, context=None, core_api=recorder)
    else:
        assert run_multinode(job, recorder, context=None, core_api=recorder) == "completed"
    assert recorder.calls == [
        ("create service", "ft-1-rdzv"),
        ("create pod", "ft-1-1"),
        ("create pod", "ft-1-2"),
        ("pipes node 0", "ft-1-0"),
        ("delete pod", "ft-1-1"),
        ("delete pod", "ft-1-2"),
        ("delete service", "ft-1-rdzv"),
    ]
    assert JOB_LABEL in job.service_manifest()["spec"]["selector"]
