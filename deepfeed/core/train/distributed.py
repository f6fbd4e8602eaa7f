"""Data-parallel training as a `torchrun` job: the launch command and the worker entry.

The Dagster asset writes a job spec (paths + TrainingConfig) to a JSON file and launches
`python -m torch.distributed.run --nproc_per_node N -m deepfeed.core.train.distributed SPEC`
through Dagster Pipes; every rank runs the same `fine_tune` loop, which sees the
initialised process group, wraps the model in DistributedDataParallel and gives each rank
its slice of the global batch. Rank 0 writes the checkpoint and the result file, and,
when launched by Pipes, streams progress to the Dagster log.

`dagster_pipes` is the protocol's dependency-free client, not Dagster itself, and it is
imported only when a Pipes context is present.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from deepfeed.core.train.training import TrainingConfig, TrainingResult, fine_tune


def write_spec(
    folder: Path,
    base_path: Path,
    records: list[dict[str, Any]],
    output_dir: Path,
    config: TrainingConfig,
    **paths_and_records: Any,
) -> Path:
    """A self-contained job description; records are written next to it as JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = {
        "base_path": str(base_path),
        "output_dir": str(output_dir),
        "config": asdict(config),
        "result": str(folder / "result.json"),
        "records": _dump(folder / "records.json", records),
    }
    for key, value in paths_and_records.items():
        if value is None:
            continue
        spec[key] = _dump(folder / f"{key}.json", value) if key.endswith("_records") else str(value)
    path = folder / "spec.json"
    path.write_text(json.dumps(spec, indent=2))
    return path


def _dump(path: Path, records: list[dict[str, Any]]) -> str:
    path.write_text(json.dumps(records, ensure_ascii=False, default=str))
    return str(path)


def launch_command(
    spec: Path,
    nproc: int,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
    rdzv_id: str = "deepfeed",
) -> list[str]:
    """The `torchrun` command of one node.

    One node (`nnodes=1`): `--standalone` (a local rendezvous on a free port). Several
    nodes: every node runs this command with its own `node_rank` and the same
    `rdzv_endpoint` (host:port of node 0, which hosts the c10d store) and `rdzv_id`;
    torchrun then waits until all `nnodes` agents have joined before starting
    `nproc` workers on each. core/train/k8s_training.py builds the pods that run it."""
    if nproc < 1 or nnodes < 1:
        raise ValueError(f"nproc={nproc}, nnodes={nnodes}: both must be at least 1")
    if nnodes == 1:
        rendezvous = ["--standalone"]
    else:
        if not rdzv_endpoint:
            raise ValueError(f"nnodes={nnodes}: a multi-node job needs rdzv_endpoint (host:port of node 0)")
        if not 0 <= node_rank < nnodes:
            raise ValueError(f"node_rank={node_rank}: must be within 0..{nnodes - 1}")
        rendezvous = [
            f"--nnodes={nnodes}",
            f"--node-rank={node_rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rdzv_endpoint}",
            f"--rdzv-id={rdzv_id}",
        ]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *rendezvous,
        f"--nproc_per_node={nproc}",
        "-m",
        "deepfeed.core.train.distributed",
        str(spec),
    ]


def read_result(spec: Path) -> TrainingResult:
    data = json.loads(Path(json.loads(Path(spec).read_text())["result"]).read_text())
    data["eval_losses"] = [tuple(x) for x in data["eval_losses"]]
    return TrainingResult(**data)


def _load(spec: dict[str, Any], key: str):
    return json.loads(Path(spec[key]).read_text()) if key in spec else None


def _pipes():
    if "DAGSTER_PIPES_CONTEXT" not in os.environ:
        return None
    from dagster_pipes import open_dagster_pipes

    return open_dagster_pipes()


def run_worker(spec_path: Path) -> None:
    spec = json.loads(Path(spec_path).read_text())
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.distributed.init_process_group(backend, timeout=timedelta(minutes=30))
    rank = torch.distributed.get_rank()
    pipes = _pipes() if rank == 0 else None
    try:
        config = TrainingConfig(**spec["config"])

        def progress(step: int, loss: float, lr: float) -> None:
            if pipes and (step % max(config.log_every, 1) == 0 or step == config.max_steps - 1):
                processes = torch.distributed.get_world_size()
                pipes.log.info(
                    f"step {step + 1}/{config.max_steps} loss {loss:.4f} lr {lr:.2e} ({processes} processes)"
                )

        result = fine_tune(
            Path(spec["base_path"]),
            _load(spec, "records"),
            Path(spec["output_dir"]),
            config,
            on_step=progress,
            teacher_path=Path(spec["teacher_path"]) if "teacher_path" in spec else None,
            ewc_records=_load(spec, "ewc_records"),
            eval_records=_load(spec, "eval_records"),
            checkpoint_dir=Path(spec["checkpoint_dir"]) if "checkpoint_dir" in spec else None,
            teacher_cache_dir=Path(spec["teacher_cache_dir"]) if "teacher_cache_dir" in spec else None,
        )
        if rank == 0:
            Path(spec["result"]).write_text(json.dumps(asdict(result)))
            if pipes:
                pipes.report_custom_message({"result": spec["result"]})
    finally:
        if pipes:
            pipes.close()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    run_worker(Path(sys.argv[1]))
