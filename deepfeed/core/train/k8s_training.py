"""Multi-node training on Kubernetes: one pod per node, torchrun's c10d rendezvous at node 0.

Every node runs the same `torchrun` command (distributed.launch_command) with its own
`--node-rank` and the same `--rdzv-endpoint`. The endpoint needs a name that exists
before node 0's pod is ready and never changes, so each pod sets `hostname` <job>-<rank>
and `subdomain` <job>-rdzv, and a headless Service of that name (no cluster IP, its
selector matching the job's pods, not-ready addresses published) gives node 0 the DNS
name <job>-0.<job>-rdzv.<namespace>.svc.cluster.local. The agent whose host is the
endpoint hosts the c10d store; the others connect to it and wait for all `nnodes`.

Node 0 is the pod that Dagster's Kubernetes Pipes client (`dagster_k8s.PipesK8sClient`)
runs: its rank 0 reports progress and the result through Pipes (distributed.run_worker),
and the client streams its logs and waits for it. Nodes 1..N-1 are plain pods created
next to it. The spec, records and the checkpoint folder live on a volume every pod
mounts (a ReadWriteMany claim), as they do on one machine.

No cluster exists in the tests: tests/deploy/test_k8s_multinode.py renders the
manifests (node 0 through the Pipes client's own pod builder) and parses every command
with torchrun's own argument parser. docs/training-tiers.md describes the setup.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepfeed.core.train.distributed import launch_command

JOB_LABEL = "deepfeed/training-job"
NODE_RANK_LABEL = "deepfeed/node-rank"
CONTAINER = "trainer"
# DNS-1123 label, with room for "-rdzv" and "-<rank>" within 63 characters.
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,50}[a-z0-9])?$")


@dataclass(frozen=True)
class MultiNodeJob:
    """One training job over `nnodes` pods of `nproc_per_node` processes each."""

    name: str
    image: str
    spec: Path  # distributed.write_spec's file, on the shared volume as every pod mounts it
    nnodes: int
    nproc_per_node: int
    namespace: str = "default"
    port: int = 29400
    gpus_per_node: int = 0  # nvidia.com/gpu requested per pod; 0 trains on CPU (gloo)
    shared_claim: str | None = None  # PersistentVolumeClaim (ReadWriteMany) with the spec and outputs
    shared_mount: str = "/shared"
    python: str = "python"  # the interpreter in the image (not this process's sys.executable)

    def __post_init__(self):
        if not _NAME.match(self.name):
            raise ValueError(
                f"job name {self.name!r}: must be a DNS-1123 label (lower-case letters, digits, '-'; "
                "at most 52 characters) because pods and the service are named after it"
            )
        if self.nnodes < 2:
            raise ValueError(f"nnodes={self.nnodes}: one node needs no rendezvous service; use nproc instead")
        if self.nproc_per_node < 1:
            raise ValueError(f"nproc_per_node={self.nproc_per_node}: must be at least 1")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port={self.port}: not a TCP port")
        if self.shared_claim and not str(self.spec).startswith(self.shared_mount.rstrip("/") + "/"):
            raise ValueError(
                f"spec {self.spec} is not under the shared mount {self.shared_mount}: the other nodes could not read it"
            )

    @property
    def service(self) -> str:
        return f"{self.name}-rdzv"

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    def hostname(self, node_rank: int) -> str:
        return f"{self.name}-{node_rank}"

    @property
    def rendezvous_endpoint(self) -> str:
        return f"{self.hostname(0)}.{self.service}.{self.namespace}.svc.cluster.local:{self.port}"

    def command(self, node_rank: int) -> list[str]:
        command = launch_command(
            self.spec,
            self.nproc_per_node,
            nnodes=self.nnodes,
            node_rank=node_rank,
            rdzv_endpoint=self.rendezvous_endpoint,
            rdzv_id=self.name,
        )
        return [self.python, *command[1:]]

    def labels(self, node_rank: int) -> dict[str, str]:
        return {JOB_LABEL: self.name, NODE_RANK_LABEL: str(node_rank)}

    def service_manifest(self) -> dict[str, Any]:
        """Headless: DNS answers with the pods' own addresses, which is what the
        hostname/subdomain records need; published before the pods are ready, because
        the rendezvous starts before any readiness."""
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": self.service, "namespace": self.namespace, "labels": {JOB_LABEL: self.name}},
            "spec": {
                "clusterIP": "None",
                "selector": {JOB_LABEL: self.name},
                "publishNotReadyAddresses": True,
                "ports": [{"name": "c10d", "port": self.port, "targetPort": self.port, "protocol": "TCP"}],
            },
        }

    def pod_meta(self, node_rank: int) -> dict[str, Any]:
        return {"labels": self.labels(node_rank)}

    def pod_spec(self, node_rank: int) -> dict[str, Any]:
        """The pod spec of one node; for node 0 it is the `base_pod_spec` of the Pipes client."""
        self._check_rank(node_rank)
        container: dict[str, Any] = {
            "name": CONTAINER,
            "image": self.image,
            "command": self.command(node_rank),
            "ports": [{"name": "c10d", "containerPort": self.port, "protocol": "TCP"}],
        }
        if self.gpus_per_node:
            container["resources"] = {"limits": {"nvidia.com/gpu": str(self.gpus_per_node)}}  # a quantity
        spec: dict[str, Any] = {
            "hostname": self.hostname(node_rank),
            "subdomain": self.service,
            "restartPolicy": "Never",  # a failed node fails the job; torchrun does not re-admit it
            "containers": [container],
        }
        if self.shared_claim:
            container["volumeMounts"] = [{"name": "shared", "mountPath": self.shared_mount}]
            spec["volumes"] = [{"name": "shared", "persistentVolumeClaim": {"claimName": self.shared_claim}}]
        return spec

    def worker_pod_manifest(self, node_rank: int) -> dict[str, Any]:
        """A node other than 0, created directly (node 0 goes through the Pipes client)."""
        if node_rank == 0:
            raise ValueError("node 0 runs through the Pipes client: use pod_meta(0) and pod_spec(0)")
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": self.hostname(node_rank), "namespace": self.namespace, **self.pod_meta(node_rank)},
            "spec": self.pod_spec(node_rank),
        }

    def _check_rank(self, node_rank: int) -> None:
        if not 0 <= node_rank < self.nnodes:
            raise ValueError(f"node_rank={node_rank}: must be within 0..{self.nnodes - 1}")


def run_multinode(job: MultiNodeJob, pipes_client, context, core_api):
    """Create the service and nodes 1..N-1, run node 0 through `pipes_client`
    (a dagster_k8s.PipesK8sClient) and remove what was created, whatever the outcome.
    `core_api` is a kubernetes.client.CoreV1Api. Returns the client's invocation."""
    core_api.create_namespaced_service(job.namespace, job.service_manifest())
    created: list[str] = []
    try:
        for rank in range(1, job.nnodes):
            manifest = job.worker_pod_manifest(rank)
            core_api.create_namespaced_pod(job.namespace, manifest)
            created.append(manifest["metadata"]["name"])
        return pipes_client.run(
            context=context,
            image=job.image,
            command=job.command(0),
            namespace=job.namespace,
            base_pod_meta=job.pod_meta(0),
            base_pod_spec=job.pod_spec(0),
        )
    finally:
        for name in created:
            core_api.delete_namespaced_pod(name, job.namespace)
        core_api.delete_namespaced_service(job.service, job.namespace)
