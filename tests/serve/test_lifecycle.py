"""The lifecycle of a model version (registered -> gated -> challenger -> champion) on a real
MLflow registry, and the server's side of it: an unevaluated version never gets a user."""

from __future__ import annotations

import dagster as dg
import pytest

from deepfeed.core.loop.lifecycle import (
    GATE_TAG,
    STAGE_TAG,
    LifecycleError,
    apply_failed_gate,
    conclude_ab_test,
    grant_challenger,
    may_serve_as_challenger,
    promote_gated,
    revoke_challenger,
)
from deepfeed.core.platform.audit import AuditLedger
from deepfeed.resources import MlflowResource
from tests.serve.test_app import make_client


def _aliases(registry) -> dict[str, str]:
    return {a: str(v) for a, v in registry.client.get_registered_model("deepfeed").aliases.items()}


def _tags(registry, version) -> dict[str, str]:
    return registry.client.get_model_version("deepfeed", version).tags


def _register_through_the_resource(registry, checkpoint, home) -> str:
    """MlflowResource.register_version, called the way finetuned_model / incremental_model call it."""
    mlflow = MlflowResource(tracking_uri=registry.uri, artifact_location=str(home / "mlartifacts"))

    @dg.asset
    def trained(context) -> str:
        return mlflow.register_version(context, source=str(checkpoint), tags={"stream": "incremental"})

    with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
        result = dg.materialize([trained], instance=instance)
    return str(result.output_for_node("trained"))


def test_registration_gives_no_alias(deepfeed_env, registry, tiny_llama):
    v1 = registry.register(tiny_llama, "champion")
    v2 = _register_through_the_resource(registry, tiny_llama, deepfeed_env)
    assert _aliases(registry) == {"champion": v1}  # before: {"champion": v1, "challenger": v2}
    tags = _tags(registry, v2)
    assert tags[STAGE_TAG] == "registered" and GATE_TAG not in tags and not may_serve_as_challenger(tags)


def test_unevaluated_version_never_receives_traffic(deepfeed_env, registry, tiny_llama, policy_file):
    from tests.serve.conftest import KEYS

    v1 = registry.register(tiny_llama, "champion")
    v2 = _register_through_the_resource(registry, tiny_llama, deepfeed_env)
    operator = {"X-API-Key": KEYS["operator"]}
    users = [f"user-{i}" for i in range(40)]  # about 20 of them in the challenger's half

    def served(client) -> set[str]:
        body = {"prompt": "hi", "max_new_tokens": 1}
        return {client.post("/generate", json={**body, "user_id": u}).json()["model_version"] for u in users}

    with make_client(deepfeed_env, registry, policy_file, split=0.5) as client:
        assert served(client) == {v1}  # registered, not evaluated: no alias, no users
        # Even an alias set by hand (or left from before) does not send users to an unevaluated version.
        registry.set_alias("challenger", v2)
        assert client.post("/admin/reload", headers=operator).json()["versions"] == {"champion": v1}
        assert served(client) == {v1} and client.get("/health").json()["versions"] == {"champion": v1}
        # Its gate passes: now it gets its A/B share.
        grant_challenger(registry.client, "deepfeed", v2, "report-1", v1, "gate passed", "run-1")
        assert client.post("/admin/reload", headers=operator).json()["versions"] == {"champion": v1, "challenger": v2}
        assert served(client) == {v1, v2}
        # Re-evaluated, it fails: the alias goes and so do its users.
        assert apply_failed_gate(registry.client, "deepfeed", v2, "report-2", "token_f1 CI below -3%", "run-2")
        assert client.post("/admin/reload", headers=operator).json()["versions"] == {"champion": v1}
        assert served(client) == {v1}
    assert _aliases(registry) == {"champion": v1}


def test_failed_gate_removes_the_alias_and_only_its_own(deepfeed_env, registry, tiny_llama):
    ledger = AuditLedger(deepfeed_env / "audit" / "ledger.jsonl")
    v1 = registry.register(tiny_llama, "champion")
    v2, v3 = registry.register(tiny_llama), registry.register(tiny_llama)
    grant_challenger(registry.client, "deepfeed", v2, "r2", v1, "gate passed", "run", ledger)
    assert _aliases(registry)["challenger"] == v2 and may_serve_as_challenger(_tags(registry, v2))
    # A newer candidate that passes replaces it (the older one is retired) ...
    grant_challenger(registry.client, "deepfeed", v3, "r3", v1, "gate passed", "run", ledger)
    assert _aliases(registry)["challenger"] == v3 and _tags(registry, v2)[STAGE_TAG] == "retired"
    # ... and an older version's failed gate does not end the newer one's test.
    assert not apply_failed_gate(registry.client, "deepfeed", v2, "r4", "chrf dropped", "run", ledger)
    assert _aliases(registry)["challenger"] == v3
    assert apply_failed_gate(registry.client, "deepfeed", v3, "r5", "toxicity rose", "run", ledger)
    assert "challenger" not in _aliases(registry)
    tags = _tags(registry, v3)
    assert tags[GATE_TAG] == "failed" and tags[STAGE_TAG] == "rejected" and not may_serve_as_challenger(tags)
    moves = [(e["action"], e["extra"]["move"]) for e in ledger.iter_entries()]
    assert moves == [
        ("released", "challenger_granted"),
        ("retired", "challenger_retired"),
        ("released", "challenger_granted"),
        ("retired", "rejected"),
        ("retired", "challenger_revoked"),
    ]
    assert ledger.verify().ok


def test_challenger_needs_a_champion_and_a_fresh_comparison(deepfeed_env, registry, tiny_llama):
    v1 = registry.register(tiny_llama)
    with pytest.raises(LifecycleError, match="no champion"):
        grant_challenger(registry.client, "deepfeed", v1, "r", None, "gate passed", "run")
    ledger = AuditLedger(deepfeed_env / "audit" / "ledger.jsonl")
    assert promote_gated(registry.client, "deepfeed", v1, "r1", "gate", "run", ledger) is None  # the first champion
    v2, v3 = registry.register(tiny_llama), registry.register(tiny_llama)
    assert promote_gated(registry.client, "deepfeed", v2, "r2", "gate", "run", ledger) == v1  # ab_test: false
    assert _aliases(registry) == {"champion": v2, "previous": v1}
    with pytest.raises(LifecycleError, match="evaluate it again"):  # compared with v1, champion is v2 now
        grant_challenger(registry.client, "deepfeed", v3, "r3", v1, "gate passed", "run")
    assert "challenger" not in _aliases(registry)


def test_ab_decision_feeds_the_promotion_gate(deepfeed_env, registry, tiny_llama):
    ledger = AuditLedger(deepfeed_env / "audit" / "ledger.jsonl")
    v1 = registry.register(tiny_llama, "champion")
    v2 = registry.register(tiny_llama)
    grant_challenger(registry.client, "deepfeed", v2, "r2", v1, "gate passed", "run", ledger)
    versions = {"champion": v1, "challenger": v2}
    # Inconclusive: nothing moves.
    assert conclude_ab_test(registry.client, "deepfeed", versions, "inconclusive", "p=0.4", "run", ledger)[0] == "none"
    # The champion was rolled back and replaced since v2's evaluation: the A/B win alone does not promote.
    v0 = registry.register(tiny_llama, "champion")
    action, verdict = conclude_ab_test(
        registry.client, "deepfeed", {"champion": v0, "challenger": v2}, "promote", "p=0.001", "run", ledger
    )
    assert not verdict.passed and "evaluated_against_this_champion" in verdict.reasons
    assert "not promoted" in action and _aliases(registry) == {"champion": v0}
    # A fresh candidate evaluated against the current champion, then better in the A/B test: promoted.
    v3 = registry.register(tiny_llama)
    grant_challenger(registry.client, "deepfeed", v3, "r3", v0, "gate passed", "run", ledger)
    action, verdict = conclude_ab_test(
        registry.client, "deepfeed", {"champion": v0, "challenger": v3}, "promote", "p=0.001", "run", ledger
    )
    assert verdict.passed and action == f"promoted v{v3} to champion"
    assert _aliases(registry) == {"champion": v3, "previous": v0}
    assert _tags(registry, v3)[STAGE_TAG] == "champion"
    # keep: the challenger is revoked.
    v4 = registry.register(tiny_llama)
    grant_challenger(registry.client, "deepfeed", v4, "r4", v3, "gate passed", "run", ledger)
    conclude_ab_test(registry.client, "deepfeed", {"champion": v3, "challenger": v4}, "keep", "worse", "run", ledger)
    assert "challenger" not in _aliases(registry) and _tags(registry, v4)[STAGE_TAG] == "rejected"
    assert not revoke_challenger(registry.client, "deepfeed", v4, "again", "run")  # nothing left to remove
