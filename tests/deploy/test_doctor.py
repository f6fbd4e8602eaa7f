"""`deepfeed doctor`: the pass/fail table and exit code, on a ready and a broken setup,
and the GPU check against the planner."""

import os
import shutil
from pathlib import Path

import pytest

from deepfeed.cli import main
from deepfeed.tools.doctor import FAIL, PASS, SKIP, check_gpu_memory, check_mlflow, check_python
from deepfeed.tools.planner import CARDS, Tier, plan
from tests.deploy.services import free_port

REPO = Path(__file__).resolve().parents[2]
MiB = 1024**2


def _rows(output: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in output.splitlines()[2:]:
        for status in (PASS, "WARN", SKIP, FAIL):
            marker = f"  {status}  "
            if marker in line:
                name, detail = line.split(marker, 1)
                rows[name.strip()] = (status, detail.strip())
    return rows


@pytest.fixture
def ready_setup(deepfeed_env, tiny_llama, monkeypatch):
    shutil.copy(REPO / "dagster.yaml", deepfeed_env / "dagster" / "dagster.yaml")
    monkeypatch.setenv("DEEPFEED_BASE_MODEL", str(tiny_llama))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return deepfeed_env


def test_ready_setup_passes_with_a_table(ready_setup, tiny_llama, capsys):
    assert main(["doctor"]) == 0
    output = capsys.readouterr().out
    rows = _rows(output)
    assert rows["python"][0] == PASS and rows["torch"][0] == PASS
    assert rows["base model"] == (PASS, f"{tiny_llama} (LlamaForCausalLM)")
    assert rows["artifact root"][0] == PASS and str(ready_setup / "artifacts") in rows["artifact root"][1]
    assert rows["mlflow"][0] == PASS and "mlflow.db" in rows["mlflow"][1]
    assert rows["dagster instance"][0] == PASS and "SqliteRunStorage" in rows["dagster instance"][1]
    assert rows["gpu memory"][0] in (PASS, SKIP)  # SKIP: no GPU on this machine
    assert rows["offline: HF hub"][0] == PASS
    assert output.rstrip().endswith("- ready")


def test_broken_setup_fails_and_names_what_is_wrong(ready_setup, tmp_path, monkeypatch, capsys):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("DEEPFEED_BASE_MODEL", str(tmp_path / "no-such-model"))
    (ready_setup / "dagster" / "dagster.yaml").unlink()
    assert main(["doctor", "--model", "7b", "--min-free-gib", "1000000"]) == 1
    output = capsys.readouterr().out
    rows = _rows(output)
    assert rows["mlflow"][0] == FAIL and f"127.0.0.1:{port}" in rows["mlflow"][1]
    assert rows["base model"][0] == FAIL and "DEEPFEED_BASE_MODEL" in rows["base model"][1]
    assert rows["artifact root"][0] == FAIL and "a run needs about 1000000.0 GiB" in rows["artifact root"][1]
    assert rows["dagster instance"][0] == FAIL and "no dagster.yaml" in rows["dagster instance"][1]
    assert "NOT READY" in output


def test_require_gpu_turns_a_missing_gpu_into_a_failure(ready_setup, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["doctor", "--require-gpu"]) == 1
    rows = _rows(capsys.readouterr().out)
    assert rows["cuda"][0] == FAIL and rows["gpu memory"][0] == FAIL


@pytest.mark.parametrize(
    "model, scenario, card, count",
    [
        ("7b", "lora-bf16-gc", "RTX4090", 1),  # the article's 7B tier
        ("7b", "full-mixed", "RTX4090", 1),  # full fine-tuning does not fit one 24 GB card
        ("13b", "infer-bf16", "A6000", 2),  # the article's 13B tier
        ("70b", "infer-bf16", "A100-80", 8),  # the article's 70B tier
        ("70b", "infer-bf16", "RTX4090", 1),
    ],
)
def test_gpu_memory_check_agrees_with_the_planner(model, scenario, card, count):
    gpus = [(CARDS[card].name, CARDS[card].memory_mib * MiB)] * count
    result = check_gpu_memory(model, scenario, gpus, require_gpu=False)
    expected = plan(model, gpus=count).fits(scenario, Tier(CARDS[card], count))
    assert result.status == (PASS if expected else FAIL), result.detail
    assert f"{count}x {CARDS[card].name}" in result.detail


def test_gpu_memory_check_names_bad_input():
    assert check_gpu_memory("7b", "no-such-scenario", [], False).status == FAIL
    bad_model = check_gpu_memory("/no/such/config.json", "infer-bf16", [], False)
    assert bad_model.status == FAIL and "deepfeed plan" in bad_model.detail
    assert check_gpu_memory("7b", "infer-bf16", [], require_gpu=False).status == SKIP


def test_python_and_sqlite_store_checks(tmp_path):
    assert check_python((3, 11)).status == PASS and check_python((3, 10)).status == FAIL
    assert check_mlflow(f"sqlite:///{tmp_path}/new/mlflow.db").status == PASS  # created on first run
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes anywhere
        assert check_mlflow(f"sqlite:///{locked}/mlflow.db").status == FAIL
