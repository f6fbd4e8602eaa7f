"""Resumable training: SIGKILL mid-run, resume, same weights; NaN keeps the last good checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from deepfeed.core.train import checkpointing
from deepfeed.core.train.elastic import ElasticScale
from deepfeed.core.train.modeling import Example
from deepfeed.core.train.training import BatchSampler, TrainingConfig, TrainingError, fine_tune, pack_examples
from tests.conftest import REPO
from tests.core.test_training import RECORDS

CONFIG = dict(max_steps=10, batch_size=4, method="full", learning_rate=3e-3, checkpoint_every=2, keep_checkpoints=2)

CHILD = """
import json, sys, time
from pathlib import Path
from deepfeed.core.train.training import TrainingConfig, fine_tune
base, out, ckpt, records, config = sys.argv[1:6]
# Slow steps give the parent time to kill the run between two checkpoints.
fine_tune(Path(base), json.loads(Path(records).read_text()), Path(out), TrainingConfig(**json.loads(config)),
          on_step=lambda step, loss, lr: time.sleep(0.4), checkpoint_dir=Path(ckpt))
"""


def weights(folder):
    tensors = {}
    for file in folder.glob("*.safetensors"):
        tensors.update(load_file(str(file)))
    return tensors


def test_sigkill_then_resume_ends_with_the_weights_of_an_uninterrupted_run(tiny_llama, tmp_path):
    reference = fine_tune(
        tiny_llama, RECORDS, tmp_path / "reference", TrainingConfig(**{**CONFIG, "checkpoint_every": 0})
    )

    records = tmp_path / "records.json"
    records.write_text(json.dumps(RECORDS))
    ckpt = tmp_path / "ckpt"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            str(tiny_llama),
            str(tmp_path / "killed"),
            str(ckpt),
            str(records),
            json.dumps(CONFIG),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while time.time() < deadline and child.poll() is None:
        done = checkpointing.checkpoints(ckpt)
        if done and int(done[-1].name.split("-")[1]) >= 4:
            break
        time.sleep(0.05)
    assert child.poll() is None, child.stderr.read().decode()[-2000:]
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed").exists()
    killed_at = int(checkpointing.checkpoints(ckpt)[-1].name.split("-")[1])
    assert 4 <= killed_at < CONFIG["max_steps"]
    assert len(checkpointing.checkpoints(ckpt)) <= CONFIG["keep_checkpoints"]

    resumed = fine_tune(tiny_llama, RECORDS, tmp_path / "resumed", TrainingConfig(**CONFIG), checkpoint_dir=ckpt)
    assert resumed.resumed_from_step == killed_at
    assert len(resumed.losses) == CONFIG["max_steps"]
    assert resumed.losses == pytest.approx(reference.losses, rel=1e-4)
    expected, got = weights(tmp_path / "reference"), weights(tmp_path / "resumed")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5)


def test_resume_refuses_a_different_configuration(tiny_llama, tmp_path):
    config = TrainingConfig(**{**CONFIG, "max_steps": 3, "checkpoint_every": 1})
    fine_tune(tiny_llama, RECORDS, tmp_path / "a", config, checkpoint_dir=tmp_path / "ckpt")
    with pytest.raises(TrainingError, match="different configuration.*learning_rate"):
        fine_tune(
            tiny_llama,
            RECORDS,
            tmp_path / "b",
            TrainingConfig(**{**CONFIG, "max_steps": 3, "learning_rate": 1e-4}),
            checkpoint_dir=tmp_path / "ckpt",
        )


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_llama, tmp_path, monkeypatch):
    trainable = {}
    real_save = checkpointing.save_checkpoint

    def save_and_remember(folder, model, optimizer, state, keep=2):
        trainable.setdefault("param", next(p for p in model.parameters() if p.requires_grad))
        return real_save(folder, model, optimizer, state, keep)

    def diverge_after_third_step(step, loss, lr):
        if step == 2:  # the weights blow up; the fourth loss is NaN
            with torch.no_grad():
                trainable["param"].fill_(float("nan"))

    monkeypatch.setattr(checkpointing, "save_checkpoint", save_and_remember)
    config = TrainingConfig(**{**CONFIG, "checkpoint_every": 2})
    with pytest.raises(TrainingError, match=r"loss became nan at step 3.*last good checkpoint is .*step-2"):
        fine_tune(
            tiny_llama,
            RECORDS,
            tmp_path / "out",
            config,
            on_step=diverge_after_third_step,
            checkpoint_dir=tmp_path / "ckpt",
        )
    assert not (tmp_path / "out").exists()
    good = checkpointing.checkpoints(tmp_path / "ckpt")
    assert [p.name for p in good] == ["step-2"]
    assert all(bool(torch.isfinite(t).all()) for t in load_file(str(good[0] / checkpointing.WEIGHTS)).values())


def test_sampler_position_restores_the_same_batches():
    lengths = [5, 9, 2, 7, 3, 8, 1, 4, 6, 10, 11]
    first = BatchSampler(lengths, 3, seed=7)
    seen = [first.next() for _ in range(9)]
    second = BatchSampler(lengths, 3, seed=7)
    for _ in range(5):
        second.next()
    resumed = BatchSampler(lengths, 3, seed=7)
    resumed.load(second.state())
    assert [resumed.next() for _ in range(4)] == seen[5:]


def test_elastic_scale_lowers_the_rate_only_when_the_replay_loss_rises():
    elastic = ElasticScale(factor=0.5, min_scale=0.2)
    assert [elastic.observe(x) for x in [3.0, 2.9, 2.8, 3.1, 3.2, 2.7, 2.9, 3.5]] == [
        1,
        1,
        1,
        0.5,
        0.25,
        0.25,
        0.2,
        0.2,
    ]
    assert elastic.reductions == 3
    copy = ElasticScale()
    copy.load(elastic.state())
    assert copy.scale == 0.2 and copy.best == 2.7 and copy.reductions == 3


def test_packing_fills_rows_and_never_predicts_across_records():
    rows = pack_examples(
        [Example([1, 2, 3], [1, 2, 3]), Example([4, 5, 6, 7], [-100, -100, 6, 7]), Example([8, 9], [8, 9])], 4
    )
    assert [r.input_ids for r in rows] == [[1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert [r.labels for r in rows] == [[-100, 2, 3, -100], [-100, 6, 7, -100], [9]]


def test_an_fgsm_run_resumes_with_its_adversarial_loss_history(tiny_llama, tmp_path):
    config = TrainingConfig(**{**CONFIG, "max_steps": 4, "fgsm_epsilon": 0.1})
    first = fine_tune(tiny_llama, RECORDS, tmp_path / "a", config, checkpoint_dir=tmp_path / "ckpt")
    assert [p.name for p in checkpointing.checkpoints(tmp_path / "ckpt")] == ["step-2"]
    # The checkpoint left at step 2 stands for a run that was killed there.
    resumed = fine_tune(tiny_llama, RECORDS, tmp_path / "b", config, checkpoint_dir=tmp_path / "ckpt")
    assert resumed.resumed_from_step == 2
    assert resumed.adversarial_losses == pytest.approx(first.adversarial_losses, rel=1e-4)
    assert resumed.losses == pytest.approx(first.losses, rel=1e-4)
