"""Who may do what: API keys mapped to roles (RBAC) plus attribute rules (ABAC).

A request is allowed when all three hold:
1. its API key is known (keys are stored only as sha256 digests);
2. the key's role grants the action (e.g. ``feedback:submit``);
3. for data-bearing actions, the data's classification is one the role may submit, and
   that classification may flow into the target model (``classifications`` maps a
   classification to the registered model names it may feed; ``"*"`` = any).

Policy file (JSON or YAML)::

    roles:
      annotator: {permissions: [feedback:submit], classifications: [public, internal]}
      operator:  {permissions: [feedback:submit, model:reload], classifications: [public]}
      app:       {permissions: [model:generate]}
    keys:
      - {sha256: <hex digest of the key>, principal: alice, role: annotator}
    classifications:
      public: ["*"]
      internal: [deepfeed]
      restricted: []
    # Optional, off unless written here: actions anyone may take without a key. Only
    # model:generate may be anonymous; submitting data or reloading models never is.
    anonymous: [model:generate]
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepfeed.core.platform.audit import AuditEntry, AuditLedger
from deepfeed.core.platform.locations import Locations

FEEDBACK_SUBMIT = "feedback:submit"
MODEL_RELOAD = "model:reload"
MODEL_GENERATE = "model:generate"
DATA_ACTIONS = frozenset({FEEDBACK_SUBMIT})
ANONYMOUS_ALLOWED = frozenset({MODEL_GENERATE})
ANONYMOUS = "anonymous"


class PolicyError(ValueError):
    """The policy file is malformed; the message names the entry."""


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def default_ledger() -> AuditLedger:
    return AuditLedger(Locations.from_environment().audit_ledger)


@dataclass(frozen=True)
class Role:
    name: str
    permissions: frozenset[str]
    classifications: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    action: str
    principal: str | None = None
    role: str | None = None
    classification: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class AccessPolicy:
    roles: Mapping[str, Role]
    keys: Mapping[str, tuple[str, str]]  # sha256 -> (principal, role)
    classifications: Mapping[str, frozenset[str]] = field(default_factory=dict)
    anonymous: frozenset[str] = frozenset()  # actions allowed without a key (explicit opt-in)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AccessPolicy:
        if not isinstance(data, Mapping):
            raise PolicyError("access policy must be a mapping with roles, keys and classifications")
        roles = {}
        for name, spec in (data.get("roles") or {}).items():
            if not isinstance(spec, Mapping) or not isinstance(spec.get("permissions", []), list):
                raise PolicyError(f"access policy roles.{name} needs a list 'permissions'")
            roles[name] = Role(name, frozenset(spec.get("permissions", [])), frozenset(spec.get("classifications", [])))
        keys = {}
        for i, entry in enumerate(data.get("keys") or []):
            digest = str(entry.get("sha256", "")) if isinstance(entry, Mapping) else ""
            if len(digest) != 64 or entry.get("role") not in roles:
                raise PolicyError(f"access policy keys[{i}] needs a 64-hex 'sha256' and a 'role' defined under roles")
            keys[digest.lower()] = (str(entry.get("principal", f"key{i}")), entry["role"])
        classifications = {}
        for name, models in (data.get("classifications") or {}).items():
            if not isinstance(models, list):
                raise PolicyError(f"access policy classifications.{name} must be a list of model names")
            classifications[name] = frozenset(str(m) for m in models)
        anonymous = data.get("anonymous") or []
        if not isinstance(anonymous, list) or not set(anonymous) <= ANONYMOUS_ALLOWED:
            raise PolicyError(
                f"access policy 'anonymous' must be a list drawn from {sorted(ANONYMOUS_ALLOWED)}; got {anonymous!r}"
            )
        return cls(roles, keys, classifications, frozenset(anonymous))

    @classmethod
    def from_file(cls, path: str | Path) -> AccessPolicy:
        path = Path(path)
        if not path.exists():
            raise PolicyError(f"access policy file {path} does not exist")
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        return cls.from_dict(data)

    def _principal(self, api_key: str | None) -> tuple[str, str] | None:
        if not api_key:
            return None
        digest = hash_key(api_key)
        # Constant-time comparison so response timing does not leak digest prefixes.
        for known, who in self.keys.items():
            if hmac.compare_digest(known, digest):
                return who
        return None

    def decide(
        self, api_key: str | None, action: str, classification: str | None = None, model: str | None = None
    ) -> Decision:
        who = self._principal(api_key)
        if who is None and not api_key and action in self.anonymous:
            return Decision(
                True,
                "anonymous access is switched on for this action",
                action,
                principal=ANONYMOUS,
                classification=classification,
                model=model,
            )
        if who is None:
            return Decision(False, "unknown or missing API key", action, classification=classification, model=model)
        principal, role_name = who
        role = self.roles[role_name]
        base = dict(action=action, principal=principal, role=role_name, classification=classification, model=model)
        if action not in role.permissions:
            return Decision(False, f"role {role_name!r} lacks permission {action!r}", **base)
        if action in DATA_ACTIONS:
            if not classification:
                return Decision(False, "data classification is required", **base)
            if classification not in role.classifications:
                return Decision(False, f"role {role_name!r} may not submit {classification!r} data", **base)
            allowed_models = self.classifications.get(classification)
            if allowed_models is None:
                return Decision(False, f"classification {classification!r} is not defined in the policy", **base)
            if "*" not in allowed_models and model not in allowed_models:
                return Decision(False, f"{classification!r} data may not feed model {model!r}", **base)
        return Decision(True, "allowed", **base)


def audit_denial(ledger: AuditLedger, decision: Decision, request_id: str, stage: str = "serve") -> None:
    """One access_denied entry: who, what, which attributes, why (never the key)."""
    ledger.append(
        AuditEntry(
            record_id=request_id,
            stage=stage,
            action="access_denied",
            reason=decision.reason,
            run_id=stage,
            extra={k: getattr(decision, k) for k in ("action", "principal", "role", "classification", "model")},
        )
    )
