import math

import numpy as np
import pytest

from deepfeed.core.data.dp import (
    PrivacyAccountant,
    PrivacyBudgetExceeded,
    laplace_noise,
    noisy_count,
    noisy_counts,
    noisy_histogram,
)


@pytest.mark.parametrize("epsilon", [0.5, 0.1])
def test_laplace_noise_has_the_right_scale(epsilon):
    noise = laplace_noise(400_000, 1.0, epsilon, rng=123)
    expected_var = 2 / epsilon**2
    assert abs(noise.mean()) < 0.02 * math.sqrt(expected_var)
    assert noise.var() == pytest.approx(expected_var, rel=0.03)
    # Laplace, not Gaussian: E|X| = b exactly.
    assert np.abs(noise).mean() == pytest.approx(1 / epsilon, rel=0.02)


def test_sensitivity_scales_the_noise():
    noise = laplace_noise(200_000, 3.0, 0.5, rng=7)
    assert noise.var() == pytest.approx(2 * (3.0 / 0.5) ** 2, rel=0.03)


def test_released_counts_have_the_right_noise_and_are_nonnegative_ints():
    true = {f"tag{i}": 1_000_000 for i in range(200_000)}
    acct = PrivacyAccountant(0.5)
    out = noisy_counts(true, 0.5, acct, rng=np.random.default_rng(5))
    err = np.array([out[k] - v for k, v in true.items()], dtype=float)
    # Rounding adds 1/12 to the Laplace variance 2/eps^2 = 8.
    assert err.var() == pytest.approx(8 + 1 / 12, rel=0.03)
    small = noisy_counts({"a": 0, "b": 1, "c": 2}, 0.05, PrivacyAccountant(0.5), rng=1)
    assert all(isinstance(v, int) and v >= 0 for v in small.values())


def test_reproducible_with_a_seed():
    counts = {"zh": 1200, "en": 800, "other": 3}
    a = noisy_counts(counts, 0.2, PrivacyAccountant(), rng=42)
    b = noisy_counts(counts, 0.2, PrivacyAccountant(), rng=42)
    c = noisy_counts(counts, 0.2, PrivacyAccountant(), rng=43)
    assert a == b and a != c
    assert list(a) == ["zh", "en", "other"]


def test_domain_releases_every_public_key():
    out = noisy_counts({"zh": 10}, 0.5, PrivacyAccountant(), rng=0, domain=["zh", "en", "other"])
    assert set(out) == {"zh", "en", "other"}


def test_accountant_refuses_overspending_and_records_nothing_then():
    acct = PrivacyAccountant(0.5)
    noisy_counts({"a": 10}, 0.2, acct, rng=0, name="per_tag")
    noisy_count(100, 0.2, acct, rng=0, name="total")
    assert acct.spent == pytest.approx(0.4) and acct.remaining == pytest.approx(0.1)
    with pytest.raises(PrivacyBudgetExceeded, match="per_language"):
        noisy_counts({"zh": 5}, 0.2, acct, rng=0, name="per_language")
    assert [r.name for r in acct.releases] == ["per_tag", "total"]
    assert acct.spent == pytest.approx(0.4)
    noisy_count(1, 0.1, acct, rng=0)  # exactly the rest still fits
    assert acct.remaining == pytest.approx(0.0)
    with pytest.raises(PrivacyBudgetExceeded):
        acct.charge("more", 1e-6, "laplace")


def test_float_rounding_does_not_refuse_an_exact_fit():
    acct = PrivacyAccountant(0.5)
    for eps in (0.1, 0.2, 0.2):  # 0.1 + 0.2 + 0.2 = 0.5000000000000001 in floats
        acct.charge("x", eps, "laplace")
    assert len(acct.releases) == 3


def test_release_records_name_epsilon_mechanism_time():
    acct = PrivacyAccountant(0.3)
    noisy_counts({"a": 1}, 0.3, acct, rng=0, name="lang")
    (r,) = acct.releases
    assert (r.name, r.epsilon, r.mechanism, r.sensitivity) == ("lang", 0.3, "laplace", 1.0)
    assert r.time.endswith("+00:00")
    d = acct.to_dict()
    assert d["epsilon_budget"] == 0.3 and d["spent"] == 0.3 and d["releases"][0]["name"] == "lang"


def test_budget_above_half_needs_explicit_permission():
    with pytest.raises(ValueError, match="allow_large_epsilon"):
        PrivacyAccountant(1.0)
    assert PrivacyAccountant(1.0, allow_large_epsilon=True).epsilon_budget == 1.0
    for bad in (0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            PrivacyAccountant(bad, allow_large_epsilon=True)
    with pytest.raises(ValueError):
        PrivacyAccountant().charge("x", 0.0, "laplace")


def test_histogram_needs_data_independent_bins():
    lengths = np.random.default_rng(0).integers(1, 500, size=10_000)
    with pytest.raises(ValueError, match="min/max"):
        noisy_histogram(lengths, 10, 0.5, PrivacyAccountant())
    acct = PrivacyAccountant()
    counts, edges = noisy_histogram(lengths, [0, 100, 200, 300, 400, 500], 0.5, acct, rng=3, name="length")
    true, _ = np.histogram(lengths, bins=edges)
    assert counts.dtype == np.int64 and (counts >= 0).all()
    assert np.abs(counts - true).max() < 40  # b = 2: |noise| > 40 has probability e^-20 per bin
    assert acct.releases[0].name == "length"
    counts2, edges2 = noisy_histogram(iter(lengths.tolist()), 4, 0.0001, PrivacyAccountant(), range=(0, 500))
    assert len(counts2) == 4 and edges2[0] == 0 and edges2[-1] == 500


# --- ε accumulated per dataset across runs (EpsilonLedger) ---------------------------------


def _release(accountant, counts=None):
    from deepfeed.core.data.dp import noisy_counts

    counts = counts or {"en": 40, "zh": 12}
    return {
        "languages": noisy_counts(counts, accountant.epsilon_budget, accountant, rng=None, name="records per language")
    }


def _run(path, run_id, epsilon=0.25, total=0.5):
    from deepfeed.core.data.dp import EpsilonLedger

    released = EpsilonLedger(path).release("dataset-a", epsilon, total, run_id, _release)
    return run_id, released.accountant.spent, released.reused_from_run, released.statistics


def test_runs_accumulate_epsilon_on_a_dataset_and_cannot_pass_its_total(tmp_path):
    from deepfeed.core.data.dp import EpsilonLedger

    path = tmp_path / "privacy" / "epsilon_ledger.json"
    first, second, third = (_run(path, f"run-{i}") for i in range(3))
    assert first[1] == pytest.approx(0.25) and second[1] == pytest.approx(0.25)
    # The third run finds the total spent: it spends nothing and re-publishes the last release.
    assert third[1] == 0 and third[2] == "run-1" and third[3] == second[3]
    ledger = EpsilonLedger(path)
    assert ledger.spent("dataset-a") == pytest.approx(0.5) and ledger.spent("dataset-b") == 0
    # Another dataset has its own budget.
    released = ledger.release("dataset-b", 0.5, 0.5, "run-9", _release)
    assert released.reused_from_run is None and released.dataset_spent == pytest.approx(0.5)


def test_a_dataset_without_an_earlier_release_is_refused_past_its_total(tmp_path):
    from deepfeed.core.data.dp import EpsilonLedger

    with pytest.raises(PrivacyBudgetExceeded, match="past its total 0.2"):
        EpsilonLedger(tmp_path / "l.json").release("d", 0.3, 0.2, "run", _release)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PrivacyBudgetExceeded, match="cannot be read"):
        EpsilonLedger(tmp_path / "bad.json").release("d", 0.1, 0.5, "run", _release)


def test_concurrent_runs_in_separate_processes_never_spend_more_than_the_total(tmp_path):
    """Before the ledger, each run had its own budget: two runs at once spent 1.0 on data
    each claimed 0.5 for. Six processes at once, 0.25 each, total 0.5: two releases."""
    from concurrent.futures import ProcessPoolExecutor

    from deepfeed.core.data.dp import EpsilonLedger

    path = tmp_path / "epsilon_ledger.json"
    with ProcessPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(_run, [path] * 6, [f"run-{i}" for i in range(6)]))
    spent = [r[1] for r in results]
    assert math.fsum(spent) == pytest.approx(0.5) and sorted(spent) == [0, 0, 0, 0, 0.25, 0.25]
    assert EpsilonLedger(path).spent("dataset-a") == pytest.approx(0.5)
    assert len(EpsilonLedger(path).entries("dataset-a")) == 2
