"""Differential privacy for corpus statistics that leave the pipeline (reports, MLflow).

Budgets are kept at two levels: a PrivacyAccountant for the releases of one run, and an
EpsilonLedger for the ε spent on one dataset over every run (docs/privacy.md).

Counts and histograms are released through the Laplace mechanism. Every release is
charged to a `PrivacyAccountant` *before* any noise is drawn, so a refused release
publishes nothing; under sequential composition the charges simply add up.

A histogram over disjoint categories (each record in exactly one bin) has L1 sensitivity
1 as a whole, so one charge of ε covers all its bins (parallel composition). Multi-label
tags break that: pass `sensitivity` = the most bins one record can touch.

numpy's floating-point Laplace sampler is not hardened against the low-order-bit attack
(Mironov 2012); for aggregate reports read by people that is an accepted trade-off.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MAX_EPSILON = 0.5
# Budgets add floats (0.1 + 0.2 + 0.2 > 0.5 in binary); a release that fits exactly
# must not be refused for rounding.
_SLACK = 1e-9


class PrivacyBudgetExceeded(RuntimeError):
    """A release would take the total ε spent past the accountant's budget."""


@dataclass(frozen=True)
class Release:
    name: str
    epsilon: float
    mechanism: str
    sensitivity: float
    time: str  # UTC, ISO 8601


def _check_epsilon(epsilon: float, what: str) -> float:
    epsilon = float(epsilon)
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"{what} must be a finite number > 0, got {epsilon!r}")
    return epsilon


class PrivacyAccountant:
    """Total ε budget of one pipeline run (or whatever scope the caller gives it).

    Budgets above 0.5 are refused unless `allow_large_epsilon=True`: the spec caps ε at
    0.5 and a typo like 5 instead of .5 must not silently weaken the guarantee.
    """

    def __init__(self, epsilon_budget: float = DEFAULT_MAX_EPSILON, *, allow_large_epsilon: bool = False):
        self.epsilon_budget = _check_epsilon(epsilon_budget, "epsilon_budget")
        if self.epsilon_budget > DEFAULT_MAX_EPSILON and not allow_large_epsilon:
            raise ValueError(
                f"epsilon_budget={self.epsilon_budget} exceeds {DEFAULT_MAX_EPSILON}; "
                "pass allow_large_epsilon=True to accept the weaker guarantee"
            )
        self._releases: list[Release] = []
        self._lock = threading.Lock()

    @property
    def spent(self) -> float:
        return math.fsum(r.epsilon for r in self._releases)

    @property
    def remaining(self) -> float:
        return max(0.0, self.epsilon_budget - self.spent)

    @property
    def releases(self) -> tuple[Release, ...]:
        return tuple(self._releases)

    def charge(self, name: str, epsilon: float, mechanism: str, sensitivity: float = 1.0) -> Release:
        """Record a release, or raise PrivacyBudgetExceeded and record nothing."""
        epsilon = _check_epsilon(epsilon, "epsilon")
        with self._lock:
            spent = self.spent
            if spent + epsilon > self.epsilon_budget + _SLACK:
                raise PrivacyBudgetExceeded(
                    f"release {name!r} needs epsilon={epsilon:g} but only {self.epsilon_budget - spent:g} "
                    f"of the budget {self.epsilon_budget:g} remains ({len(self._releases)} releases so far)"
                )
            release = Release(
                name=name,
                epsilon=epsilon,
                mechanism=mechanism,
                sensitivity=float(sensitivity),
                time=_dt.datetime.now(_dt.timezone.utc).isoformat(),
            )
            self._releases.append(release)
            return release

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary for run metadata and MLflow."""
        return {
            "epsilon_budget": self.epsilon_budget,
            "spent": self.spent,
            "remaining": self.remaining,
            "releases": [asdict(r) for r in self._releases],
        }


def laplace_noise(
    shape: int | tuple[int, ...], sensitivity: float, epsilon: float, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """Raw Laplace(0, sensitivity/ε) noise. Not a release by itself: nothing is charged."""
    epsilon = _check_epsilon(epsilon, "epsilon")
    if sensitivity <= 0:
        raise ValueError("sensitivity must be > 0")
    return np.random.default_rng(rng).laplace(0.0, sensitivity / epsilon, size=shape)


def _post_process(noisy: np.ndarray) -> np.ndarray:
    # Rounding and clipping touch only the noisy output, so the guarantee is unchanged.
    return np.clip(np.rint(noisy), 0, None).astype(np.int64)


def noisy_counts(
    counts: Mapping[str, int],
    epsilon: float,
    accountant: PrivacyAccountant,
    rng: np.random.Generator | int | None = None,
    *,
    name: str = "counts",
    sensitivity: float = 1.0,
    domain: Iterable[str] | None = None,
) -> dict[str, int]:
    """Counts per category, each with Laplace noise, as non-negative integers.

    The set of keys is released as is, so it must be public: pass `domain` (all possible
    categories, missing ones counted as 0) when the keys present would themselves reveal
    something, e.g. a tag only one record carries.
    """
    keys = list(domain) if domain is not None else list(counts)
    values = np.array([counts.get(k, 0) for k in keys], dtype=float)
    accountant.charge(name, epsilon, "laplace", sensitivity)
    noisy = _post_process(values + laplace_noise(len(keys), sensitivity, epsilon, rng))
    return dict(zip(keys, noisy.tolist()))


def noisy_count(
    count: int,
    epsilon: float,
    accountant: PrivacyAccountant,
    rng: np.random.Generator | int | None = None,
    *,
    name: str = "count",
) -> int:
    return noisy_counts({name: count}, epsilon, accountant, rng, name=name)[name]


def noisy_histogram(
    values: Iterable[float] | np.ndarray,
    bins: int | Iterable[float],
    epsilon: float,
    accountant: PrivacyAccountant,
    rng: np.random.Generator | int | None = None,
    *,
    range: tuple[float, float] | None = None,  # noqa: A002 - numpy's own name for it
    name: str = "histogram",
) -> tuple[np.ndarray, np.ndarray]:
    """(noisy counts, bin edges). Edges must not come from the data: numpy would place
    them at the exact min and max, which are themselves private."""
    if isinstance(bins, int) and range is None:
        raise ValueError("give explicit bin edges or a fixed range: data-derived edges leak the min/max")
    edge_spec = bins if isinstance(bins, int) else np.asarray(list(bins), dtype=float)
    data = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=float)
    counts, edges = np.histogram(data, bins=edge_spec, range=range)
    accountant.charge(name, epsilon, "laplace", 1.0)
    return _post_process(counts + laplace_noise(len(counts), 1.0, epsilon, rng)), edges


# --- ε accumulated across runs ------------------------------------------------------


class EpsilonLedger:
    """ε spent per dataset, summed over every run and process that ever released
    statistics of it: a JSON file (e.g. $DEEPFEED_HOME/privacy/epsilon_ledger.json) read
    and rewritten under a file lock, so two runs at once cannot both take the last of a
    budget. A PrivacyAccountant is one run's view; this is the dataset's.

    Each entry keeps the noisy statistics it released. Publishing them again costs no ε
    (post-processing of a DP release), so a run on a dataset whose budget is spent
    re-publishes the last release instead of drawing new noise.
    """

    def __init__(self, path: str | os.PathLike[str], lock_timeout_s: float = 60.0):
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s

    def _lock(self):
        from filelock import FileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.path) + ".lock", timeout=self.lock_timeout_s)

    def _read(self) -> dict[str, list[dict[str, Any]]]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            # Unreadable means unknown spending: refusing is the only safe answer.
            raise PrivacyBudgetExceeded(
                f"the ε ledger {self.path} cannot be read ({exc}); no release until it is repaired"
            ) from exc
        return data.get("datasets", {})

    def _write(self, datasets: dict[str, list[dict[str, Any]]]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"datasets": datasets}, indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.path)

    def entries(self, dataset: str) -> list[dict[str, Any]]:
        with self._lock():
            return list(self._read().get(dataset, []))

    def spent(self, dataset: str) -> float:
        return math.fsum(e["epsilon"] for e in self.entries(dataset))

    def release(
        self,
        dataset: str,
        epsilon: float,
        total: float,
        run_id: str,
        compute: Callable[[PrivacyAccountant], dict[str, Any]],
    ) -> "LedgerRelease":
        """Run `compute` (which charges the accountant it is given and returns the noisy
        statistics) if `epsilon` more fits in the dataset's `total`; else re-publish the
        last release of the dataset; else raise PrivacyBudgetExceeded."""
        epsilon = _check_epsilon(epsilon, "epsilon")
        total = _check_epsilon(total, "total")
        with self._lock():
            datasets = self._read()
            history = datasets.setdefault(dataset, [])
            spent = math.fsum(e["epsilon"] for e in history)
            if spent + epsilon <= total + _SLACK:
                accountant = PrivacyAccountant(epsilon, allow_large_epsilon=epsilon > DEFAULT_MAX_EPSILON)
                statistics = compute(accountant)
                entry = {
                    "run_id": run_id,
                    "epsilon": accountant.spent,
                    "time": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                    "releases": [r.name for r in accountant.releases],
                    "statistics": statistics,
                }
                history.append(entry)
                self._write(datasets)
                return LedgerRelease(statistics, accountant, spent + accountant.spent, total, None)
            previous = next((e for e in reversed(history) if e.get("statistics") is not None), None)
            if previous is None:
                raise PrivacyBudgetExceeded(
                    f"dataset {dataset}: a release of ε={epsilon:g} would bring the ε spent on it to "
                    f"{spent + epsilon:g}, past its total {total:g} (ledger {self.path}); and there is no earlier "
                    "release to re-publish"
                )
            unspent = PrivacyAccountant(epsilon, allow_large_epsilon=True)
            return LedgerRelease(previous["statistics"], unspent, spent, total, previous["run_id"])


@dataclass(frozen=True)
class LedgerRelease:
    statistics: dict[str, Any]
    accountant: PrivacyAccountant  # this run's charges (none when reused)
    dataset_spent: float  # ε spent on the dataset over all runs, this one included
    dataset_total: float
    reused_from_run: str | None  # the run whose release was re-published, or None for a new one
