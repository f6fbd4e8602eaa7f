"""The registry's alias moves on a real MLflow (sqlite) registry: each move writes exactly one
audit entry of one kind, and a rollback restores the champion that was replaced."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepfeed.core.loop.registry import (
    AUDIT_STAGE,
    RegistryError,
    promote,
    remove_challenger,
    rollback,
    set_challenger,
)
from deepfeed.core.platform.audit import AuditLedger

MODEL = "deepfeed"


def _aliases(registry) -> dict[str, str]:
    return {a: str(v) for a, v in registry.client.get_registered_model(MODEL).aliases.items()}


def _versions(registry, tmp_path, n: int) -> list[str]:
    return [
        str(registry.client.create_model_version(MODEL, source=str(tmp_path / f"ckpt{i}")).version) for i in range(n)
    ]


@pytest.fixture
def ledger(deepfeed_env) -> AuditLedger:
    return AuditLedger(deepfeed_env / "audit" / "ledger.jsonl")


def test_each_promotion_writes_one_audit_entry_and_keeps_the_old_champion_as_previous(registry, ledger, tmp_path):
    v1, v2 = _versions(registry, tmp_path, 2)
    first = promote(registry.client, MODEL, v1, "first champion", "run-1", ledger)
    assert (first.from_version, first.to_version) == ("none", v1)
    assert _aliases(registry) == {"champion": v1}
    set_challenger(registry.client, MODEL, v2, "gate passed", "run-2", ledger)
    promote(registry.client, MODEL, v2, "won the A/B test", "run-3", ledger)
    # The promoted challenger's test is over: its challenger alias goes with the promotion.
    assert _aliases(registry) == {"champion": v2, "previous": v1}
    entries = list(ledger.iter_entries())
    assert [(e["action"], e["extra"]["move"]) for e in entries] == [
        ("promoted", "champion_promoted"),
        ("released", "challenger_granted"),
        ("promoted", "champion_promoted"),
    ]
    assert {e["stage"] for e in entries} == {AUDIT_STAGE}
    assert entries[-1]["record_id"] == f"model:{MODEL}:v{v2}" and entries[-1]["run_id"] == "run-3"
    assert entries[-1]["extra"]["from_version"] == v1 and entries[-1]["reason"] == "won the A/B test"
    assert registry.client.get_model_version(MODEL, v2).tags["promoted"] == "true"
    assert ledger.verify().ok


def test_rollback_restores_the_previous_champion_once(registry, ledger, tmp_path):
    v1, v2, v3 = _versions(registry, tmp_path, 3)
    promote(registry.client, MODEL, v1, "first", "run", ledger)
    promote(registry.client, MODEL, v2, "second", "run", ledger)
    with pytest.raises(RegistryError, match="it moved since"):
        rollback(registry.client, MODEL, "ratings fell", "run", ledger, expected_champion=v3)
    with pytest.raises(RegistryError, match="needs a reason"):
        rollback(registry.client, MODEL, "  ", "run", ledger)
    assert _aliases(registry) == {"champion": v2, "previous": v1}  # refused moves change nothing

    move = rollback(registry.client, MODEL, "ratings fell 11%", "run-rb", ledger, expected_champion=v2)
    assert (move.from_version, move.to_version) == (v2, v1)
    assert _aliases(registry) == {"champion": v1}
    tags = registry.client.get_model_version(MODEL, v2).tags
    assert tags["rolled_back"] == "true" and tags["rolled_back_reason"] == "ratings fell 11%"
    [entry] = list(ledger.iter_entries(action="rolled_back"))
    assert entry["stage"] == AUDIT_STAGE and entry["record_id"] == f"model:{MODEL}:v{v2}"
    assert entry["extra"]["move"] == "champion_rolled_back" and entry["extra"]["to_version"] == v1

    count = len(list(ledger.iter_entries()))
    with pytest.raises(RegistryError, match="no 'previous' version"):
        rollback(registry.client, MODEL, "again", "run", ledger)
    assert _aliases(registry) == {"champion": v1} and len(list(ledger.iter_entries())) == count


def test_challenger_moves_are_audited_and_an_old_verdict_never_ends_a_newer_test(registry, ledger, tmp_path):
    v1, v2, v3 = _versions(registry, tmp_path, 3)
    promote(registry.client, MODEL, v1, "first", "run", ledger)
    set_challenger(registry.client, MODEL, v2, "gate passed", "run", ledger)
    move = set_challenger(registry.client, MODEL, v3, "gate passed", "run", ledger)
    assert (move.alias, move.from_version, move.to_version) == ("challenger", v2, v3)
    assert not remove_challenger(registry.client, MODEL, v2, "late verdict", "run", ledger)
    assert _aliases(registry)["challenger"] == v3
    assert remove_challenger(registry.client, MODEL, v3, "A/B kept the champion", "run", ledger)
    assert "challenger" not in _aliases(registry)
    moves = [(e["record_id"], e["action"], e["extra"]["move"]) for e in ledger.iter_entries()][1:]
    assert moves == [
        (f"model:{MODEL}:v{v2}", "released", "challenger_granted"),
        (f"model:{MODEL}:v{v2}", "retired", "challenger_retired"),
        (f"model:{MODEL}:v{v3}", "released", "challenger_granted"),
        (f"model:{MODEL}:v{v3}", "retired", "challenger_revoked"),
    ]


def test_deepfeed_rollback_command(registry, ledger, deepfeed_env, tmp_path):
    v1, v2 = _versions(registry, tmp_path, 2)
    promote(registry.client, MODEL, v1, "first", "run", ledger)
    promote(registry.client, MODEL, v2, "second", "run", ledger)
    env = {**os.environ, "DEEPFEED_HOME": str(deepfeed_env), "MLFLOW_TRACKING_URI": registry.uri}
    repo = Path(__file__).resolve().parents[2]

    def deepfeed(*args):
        return subprocess.run(
            [sys.executable, "-m", "deepfeed.cli", *args], env=env, cwd=repo, capture_output=True, text=True
        )

    wrong = deepfeed("rollback", "--reason", "manual", "--expected-champion", v1)
    assert wrong.returncode == 2 and "it moved since" in wrong.stderr
    done = deepfeed("rollback", "--reason", "operator: bad answers in ticket 7")
    assert done.returncode == 0, done.stderr
    assert f"champion v{v2} -> v{v1}" in done.stdout
    assert _aliases(registry) == {"champion": v1}
    [entry] = list(ledger.iter_entries(action="rolled_back"))
    assert entry["run_id"] == "deepfeed rollback" and entry["reason"] == "operator: bad answers in ticket 7"
