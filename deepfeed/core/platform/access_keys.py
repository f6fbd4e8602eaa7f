"""Create API keys in an access-policy file (see deepfeed.core.platform.access for the format).

Only the key's sha256 is written; the key itself is returned once, to be handed to its
holder. The file is rewritten atomically and left readable by its owner only.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from deepfeed.core.platform.access import FEEDBACK_SUBMIT, MODEL_RELOAD, AccessPolicy, PolicyError, hash_key

# What a new policy file starts with: the roles and classifications core/access.py documents.
STARTER_POLICY: dict[str, Any] = {
    "roles": {
        "annotator": {"permissions": [FEEDBACK_SUBMIT], "classifications": ["public", "internal"]},
        "operator": {"permissions": [FEEDBACK_SUBMIT, MODEL_RELOAD], "classifications": ["public"]},
    },
    "keys": [],
    "classifications": {"public": ["*"], "internal": ["deepfeed"], "restricted": []},
}


def read_policy_data(path: Path) -> dict[str, Any]:
    """The policy file as data, with parse errors turned into one-line PolicyErrors."""
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError: both carry line and column
        where = getattr(exc, "problem_mark", None)
        line = f"line {where.line + 1}, column {where.column + 1}" if where else getattr(exc, "msg", "")
        problem = getattr(exc, "problem", None) or type(exc).__name__
        kind = path.suffix.lstrip(".").upper()
        raise PolicyError(f"access policy {path} is not valid {kind}: {problem} ({line})") from exc
    if data is None:
        data = {}
    AccessPolicy.from_dict(data)  # raises PolicyError naming the bad entry
    return data


def check_policy_file(path: str | Path) -> AccessPolicy:
    """Load a policy file; every problem is one PolicyError line (missing, unparsable, invalid)."""
    path = Path(path)
    if not path.exists():
        raise PolicyError(f"access policy file {path} does not exist")
    return AccessPolicy.from_dict(read_policy_data(path))


def add_key(path: str | Path, principal: str, role: str) -> str:
    """Append a new key for `principal` with `role`; returns the key (shown once)."""
    path = Path(path)
    data = read_policy_data(path) if path.exists() else json.loads(json.dumps(STARTER_POLICY))
    roles = data.get("roles") or {}
    if role not in roles:
        raise PolicyError(f"role {role!r} is not defined in {path}; defined: {', '.join(sorted(roles)) or 'none'}")
    if not principal.strip():
        raise PolicyError("principal must not be empty")
    key = secrets.token_urlsafe(32)
    data["keys"] = [*(data.get("keys") or []), {"sha256": hash_key(key), "principal": principal, "role": role}]
    AccessPolicy.from_dict(data)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(data, sort_keys=False)
    else:
        text = json.dumps(data, indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return key
