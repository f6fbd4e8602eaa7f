import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from deepfeed.core.evaluate.learning_outcome import RecordLosses, loss_windows, paired_difference, perplexity_ratio

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "learning_outcome.py"


def test_loss_windows_compare_the_first_and_last_steps():
    falling = loss_windows([4.0] * 10 + [3.0] * 20 + [2.0] * 10)
    assert (falling.first, falling.last, falling.window) == (4.0, 2.0, 10) and falling.fell
    assert falling.relative_change == pytest.approx(-0.5)
    # The demo before the fix: noise around a flat line does not count as falling.
    flat = loss_windows([3.893] * 10 + [3.907] * 10)
    assert not flat.fell
    short = loss_windows([3.0, 2.0, 1.0])  # windows never overlap
    assert (short.first, short.last, short.window) == (3.0, 1.0, 1)
    with pytest.raises(ValueError, match="at least 2 steps"):
        loss_windows([1.0])


def test_paired_difference_interval():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 0.2, 60)
    same = paired_difference(base, base)
    assert same.difference == 0 and same.low == same.high == 0 and not same.excludes_zero
    better = paired_difference(base, base + 0.05 + rng.normal(0, 0.01, 60))
    assert better.low > 0 and better.excludes_zero and better.low <= better.difference <= better.high
    noisy = paired_difference(base, base + rng.normal(0, 0.2, 60))
    assert noisy.low < 0 < noisy.high
    with pytest.raises(ValueError, match="equally long"):
        paired_difference([0.1, 0.2], [0.1])


def test_perplexity_ratio_is_paired_on_records():
    tokens = np.array([10.0, 20.0, 5.0, 8.0])
    reference = RecordLosses(np.array([20.0, 44.0, 9.0, 17.0]), tokens)
    assert perplexity_ratio(reference, reference) == (0.0, 0.0, 0.0)
    worse = RecordLosses(reference.nll + 0.1 * tokens, tokens)  # +0.1 nat per token
    ratio, low, high = perplexity_ratio(reference, worse)
    assert ratio == pytest.approx(math.exp(0.1) - 1) and low == pytest.approx(ratio) and high == pytest.approx(ratio)
    with pytest.raises(ValueError, match="same records"):
        perplexity_ratio(reference, RecordLosses(reference.nll, tokens + 1))


def test_benchmark_tiny_trains_and_scores_every_model(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("learning_outcome_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--tiny", "--json", str(tmp_path / "out.json")])
    rows = {r["model"]: r for r in result["rows"]}
    assert list(rows) == ["base", "champion", "full", "incr", "incr+ewc"]
    assert rows["base"]["new_f1_vs_base"] == (0.0, 0.0, 0.0) and rows["base"]["new_ppl_vs_base"][0] == 0.0
    assert rows["champion"]["old_ppl_vs_champion"][0] == 0.0
    # Training moved every trained model away from its start.
    assert all(rows[m]["new_ppl"] != rows["base"]["new_ppl"] for m in ("champion", "full"))
    assert all(rows[m]["old_ppl"] != rows["champion"]["old_ppl"] for m in ("incr", "incr+ewc"))
    assert all(math.isfinite(v) for r in rows.values() for v in (r["new_ppl"], r["old_ppl"], *r["old_ppl_vs_champion"]))
    assert set(result["training"]) == {"champion", "full", "incr", "incr+ewc"}
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["table"] == result["table"]
    assert "forgetting after an incremental round with EWC" in capsys.readouterr().out
