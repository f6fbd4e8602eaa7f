"""Two CPU processes (gloo) follow the loss curve of one process with the same global batch."""

import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from deepfeed.core.distributed import launch_command, read_result, write_spec
from deepfeed.core.training import TrainingConfig, fine_tune
from tests.conftest import REPO
from tests.core.test_training import RECORDS

CONFIG = TrainingConfig(max_steps=6, batch_size=4, method="full", learning_rate=3e-3, warmup_steps=1)


def test_two_gloo_processes_match_one_process(tiny_llama, tmp_path):
    single = fine_tune(tiny_llama, RECORDS, tmp_path / "single", CONFIG)
    spec = write_spec(tmp_path / "job", tiny_llama, RECORDS, tmp_path / "ddp", CONFIG, eval_records=RECORDS[:4])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(launch_command(spec, nproc=2), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = read_result(spec)
    assert len(ddp.losses) == CONFIG.max_steps
    assert ddp.losses == pytest.approx(single.losses, rel=1e-3)
    assert ddp.tokens == single.tokens
    expected, got = load_file(str(tmp_path / "single" / "model.safetensors")), load_file(str(tmp_path / "ddp" / "model.safetensors"))
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-3, atol=1e-4)
