"""FSDP2 through the same torchrun/Pipes launch path as DDP: two gloo processes follow
one process's losses while each rank holds about half of the parameters, gradients and
AdamW state."""

from __future__ import annotations

import subprocess

import pytest
from safetensors.torch import load_file

from deepfeed.core.train.distributed import launch_command, read_result, write_spec
from deepfeed.core.train.training import TrainingConfig, TrainingError, fine_tune

RECORDS = [
    {"kind": "pair", "prompt": f"What is item {i}?", "response": f"Item {i} is a demo answer."} for i in range(16)
]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_fsdp_over_two_processes_follows_one_process_and_shards_the_state(tiny_llama, tmp_path, method):
    config = TrainingConfig(
        max_steps=3, method=method, batch_size=4, learning_rate=3e-3, warmup_steps=0, sharding="fsdp"
    )
    single = fine_tune(tiny_llama, RECORDS, tmp_path / "single", config)
    spec = write_spec(tmp_path / "job", tiny_llama, RECORDS, tmp_path / "fsdp", config)
    done = subprocess.run(launch_command(spec, 2), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    sharded = read_result(spec)
    assert single.sharding == "none" and sharded.sharding == "fsdp"
    assert sharded.losses == pytest.approx(single.losses, rel=1e-3)

    (whole,) = single.rank_state_bytes
    assert len(sharded.rank_state_bytes) == 2
    for rank, held in enumerate(sharded.rank_state_bytes):
        print(f"{method} rank {rank}: {held} of one process's {whole}")
        for kind in ("parameters", "gradients", "optimizer"):
            # Each unit is split by rows: ~1/2 per rank, off by at most a row per tensor.
            assert held[kind] == pytest.approx(whole[kind] / 2, rel=0.05), (rank, kind)
    assert whole["gradients"] > 0 and sum(r["parameters"] for r in sharded.rank_state_bytes) >= whole["parameters"]

    # The saved checkpoint is whole (gathered from both ranks) and matches one process.
    a = load_file(str(tmp_path / "single" / "model.safetensors"))
    b = load_file(str(tmp_path / "fsdp" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


def test_fsdp_refuses_what_it_cannot_shard(tiny_llama, tmp_path):
    with pytest.raises(TrainingError, match="sharding='fsdp' does not support ewc_lambda"):
        fine_tune(tiny_llama, RECORDS, tmp_path / "out", TrainingConfig(sharding="fsdp", ewc_lambda=1.0))
    with pytest.raises(TrainingError, match="sharding='zero'"):
        fine_tune(tiny_llama, RECORDS, tmp_path / "out", TrainingConfig(sharding="zero"))
