"""The service's two secrets: the user-id salt and the audit-ledger key.

Each is read, in order, from an environment variable holding the value
(``DEEPFEED_USER_SALT``, ``DEEPFEED_AUDIT_KEY``), an environment variable naming a file
(``..._FILE``, e.g. a Kubernetes secret mount), or ``$DEEPFEED_HOME/secrets/<name>``.
A file must not be readable by group or others: a salt or key anyone on the machine can
read protects nothing, so such a file is refused rather than used. The demo writes fresh
ones under its home with :func:`ensure_secret` (mode 0600 in a 0700 folder); production
mounts them from a secret store, outside the home (see docs/security.md).
"""

from __future__ import annotations

import os
import secrets as _secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from deepfeed.core.platform.home import deepfeed_home

_MIN_CHARS = 16  # shorter than 16 characters is guessable by enumeration


class MissingSecret(RuntimeError):
    """A required secret is not configured; the message says how to configure it."""


@dataclass(frozen=True)
class SecretSpec:
    name: str  # file name under $DEEPFEED_HOME/secrets
    env: str  # variable holding the value
    purpose: str

    @property
    def file_env(self) -> str:
        return f"{self.env}_FILE"

    def default_path(self, home: Path | None = None) -> Path:
        return (home or deepfeed_home()) / "secrets" / self.name


USER_SALT = SecretSpec("user_salt", "DEEPFEED_USER_SALT", "HMAC key that pseudonymizes user ids")
AUDIT_KEY = SecretSpec("audit_key", "DEEPFEED_AUDIT_KEY", "HMAC key that seals the audit ledger")


def _read_file(path: Path, spec: SecretSpec) -> str:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise MissingSecret(
            f"{spec.purpose}: {path} is readable by group/others (mode {stat.S_IMODE(mode):o}); run `chmod 600 {path}`"
        )
    value = path.read_text(encoding="utf-8").strip()
    if len(value) < _MIN_CHARS:
        raise MissingSecret(f"{spec.purpose}: {path} holds fewer than {_MIN_CHARS} characters")
    return value


def load_secret(spec: SecretSpec, home: Path | None = None, required: bool = True) -> str | None:
    """The secret's value, or None (``required=False``) / MissingSecret when unset."""
    value = os.environ.get(spec.env, "").strip()
    if value:
        if len(value) < _MIN_CHARS:
            raise MissingSecret(f"{spec.purpose}: ${spec.env} is shorter than {_MIN_CHARS} characters")
        return value
    file_name = os.environ.get(spec.file_env, "").strip()
    if file_name:
        path = Path(file_name).expanduser()
        if not path.is_file():
            raise MissingSecret(f"{spec.purpose}: ${spec.file_env} names {path}, which is not a file")
        return _read_file(path, spec)
    path = spec.default_path(home)
    if path.is_file():
        return _read_file(path, spec)
    if not required:
        return None
    raise MissingSecret(
        f"no {spec.purpose}: set ${spec.env}, or ${spec.file_env} to a file only its owner can read, "
        f"or create {path} (`umask 077; mkdir -p {path.parent}; openssl rand -hex 32 > {path}`)"
    )


def ensure_secret(spec: SecretSpec, home: Path | None = None) -> Path:
    """Create ``$DEEPFEED_HOME/secrets/<name>`` (32 random bytes, hex, mode 0600) unless it exists."""
    path = spec.default_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    if path.is_file():
        return path
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(_secrets.token_hex(32) + "\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        # link() publishes the complete file or fails if one exists: two processes starting
        # at once never each use a different key, nor read a half-written one.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path
