from __future__ import annotations

import pytest

from deepfeed.core.platform.access import AccessPolicy, PolicyError, audit_denial, hash_key
from deepfeed.core.platform.audit import AuditLedger

POLICY = {
    "roles": {
        "annotator": {"permissions": ["feedback:submit"], "classifications": ["public", "internal"]},
        "ops": {"permissions": ["model:reload"]},
    },
    "keys": [
        {"sha256": hash_key("a"), "principal": "ann", "role": "annotator"},
        {"sha256": hash_key("o"), "principal": "op", "role": "ops"},
    ],
    "classifications": {"public": ["*"], "internal": ["deepfeed"], "secret": []},
}


@pytest.mark.parametrize(
    "key, action, cls, model, allowed, reason",
    [
        ("a", "feedback:submit", "public", "anything", True, "allowed"),
        ("a", "feedback:submit", "internal", "deepfeed", True, "allowed"),
        ("a", "feedback:submit", "internal", "other-model", False, "may not feed model"),
        ("a", "feedback:submit", "secret", "deepfeed", False, "may not submit 'secret'"),
        ("a", "feedback:submit", None, "deepfeed", False, "classification is required"),
        ("a", "model:reload", None, None, False, "lacks permission"),
        ("o", "model:reload", None, None, True, "allowed"),
        ("x", "model:reload", None, None, False, "unknown"),
        (None, "feedback:submit", "public", "deepfeed", False, "unknown"),
    ],
)
def test_decisions(key, action, cls, model, allowed, reason):
    d = AccessPolicy.from_dict(POLICY).decide(key, action, cls, model)
    assert d.allowed is allowed and reason in d.reason


def test_yaml_policy_and_errors(tmp_path):
    import yaml

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(POLICY))
    assert AccessPolicy.from_file(path).decide("o", "model:reload").allowed
    with pytest.raises(PolicyError, match=r"keys\[0\]"):
        AccessPolicy.from_dict({**POLICY, "keys": [{"sha256": "abc", "role": "annotator"}]})
    with pytest.raises(PolicyError, match="does not exist"):
        AccessPolicy.from_file(tmp_path / "missing.json")


def test_denials_are_audited_without_the_key(tmp_path):
    ledger = AuditLedger(tmp_path / "ledger.jsonl")
    d = AccessPolicy.from_dict(POLICY).decide("a", "feedback:submit", "secret", "deepfeed")
    audit_denial(ledger, d, "req-1")
    [entry] = list(ledger.iter_entries(action="access_denied"))
    assert entry["record_id"] == "req-1" and entry["extra"]["classification"] == "secret"
    assert hash_key("a") not in str(entry) and ledger.verify().ok


def test_anonymous_generation_is_off_unless_the_policy_says_so():
    closed = AccessPolicy.from_dict(POLICY)
    assert not closed.decide(None, "model:generate").allowed
    assert not closed.decide("a", "model:generate").allowed  # a role needs the permission too
    opened = AccessPolicy.from_dict({**POLICY, "anonymous": ["model:generate"]})
    d = opened.decide(None, "model:generate")
    assert d.allowed and d.principal == "anonymous" and d.role is None
    assert not opened.decide("wrong", "model:generate").allowed  # a bad key is not anonymity
    assert not opened.decide(None, "feedback:submit", "public", "deepfeed").allowed


@pytest.mark.parametrize("anonymous", [["feedback:submit"], ["model:reload"], "model:generate"])
def test_only_generation_may_be_anonymous(anonymous):
    with pytest.raises(PolicyError, match="anonymous"):
        AccessPolicy.from_dict({**POLICY, "anonymous": anonymous})
