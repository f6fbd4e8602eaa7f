"""Where the shared ledgers of a deepfeed home live: one definition each, used by assets,
sensors and the CLI alike."""

from __future__ import annotations

from deepfeed.core.data.dp import EpsilonLedger
from deepfeed.core.platform.audit import AuditLedger
from deepfeed.core.platform.home import deepfeed_home

# Entries appended to the audit ledger per write: bounds memory on large corpora.
AUDIT_CHUNK = 10_000


def audit_ledger() -> AuditLedger:
    """The ledger every stage appends to ($DEEPFEED_HOME/audit/ledger.jsonl)."""
    return AuditLedger(deepfeed_home() / "audit" / "ledger.jsonl")


def epsilon_ledger() -> EpsilonLedger:
    """The ε spent per dataset across runs ($DEEPFEED_HOME/privacy/epsilon_ledger.json)."""
    return EpsilonLedger(deepfeed_home() / "privacy" / "epsilon_ledger.json")
