"""The one place where raw (unscrubbed) corpus bytes may rest: the guarded raw store.

Everything else under the home holds PII-scrubbed text only (raw_corpus scrubs at
ingest). What cannot be read (a malformed line, a file in no known encoding) still has
to be kept byte for byte so a fixed parser can re-read it; those bytes go here and
nowhere else. See docs/privacy.md.

Guards:

* location: ``$DEEPFEED_RAW_STORE`` (default ``$DEEPFEED_HOME/raw_store``), one folder per
  source, so retiring a source can delete its raw bytes (:meth:`RawStore.purge`);
* permissions: folders 0700 and files 0600, set when written and checked when read, so
  a store someone opened up is refused rather than used;
* encryption (optional): with ``$DEEPFEED_RAW_STORE_KEY`` set (a Fernet key, see
  :func:`new_key`) every file is a Fernet token (AES-128-CBC + HMAC-SHA256) named
  ``<sha256>.fernet``. The `cryptography` package does the cryptography; nothing here
  implements a cipher.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

from deepfeed.core.platform.home import deepfeed_home

ENV_PATH = "DEEPFEED_RAW_STORE"
ENV_KEY = "DEEPFEED_RAW_STORE_KEY"
QUARANTINE_BLOBS = "quarantine_blobs"
ENCRYPTED_SUFFIX = ".fernet"
DIR_MODE = 0o700
FILE_MODE = 0o600


class RawStoreError(RuntimeError):
    pass


def new_key() -> str:
    """A fresh key for $DEEPFEED_RAW_STORE_KEY (url-safe base64, 32 random bytes)."""
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def default_raw_store_path() -> Path:
    return Path(os.environ.get(ENV_PATH) or deepfeed_home() / "raw_store").expanduser().resolve()


def _fernet(key: str | bytes | None):
    if not key:
        return None
    from cryptography.fernet import Fernet

    try:
        return Fernet(key.encode() if isinstance(key, str) else key)
    except (ValueError, TypeError) as exc:
        raise RawStoreError(
            f"{ENV_KEY} is not a valid Fernet key (32 url-safe base64-encoded bytes; make one with "
            "`python -c 'from deepfeed.core.data.raw_store import new_key; print(new_key())'`): "
            f"{exc}"
        ) from exc


def _private_dir(path: Path) -> None:
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    path.chmod(DIR_MODE)  # mkdir's mode is filtered by the umask, and an existing folder keeps its own


def _check_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise RawStoreError(
            f"{path} is readable by others (mode {mode:04o}); the raw store must be "
            f"{DIR_MODE:04o} for folders and {FILE_MODE:04o} for files: chmod it back or purge it"
        )


def write_private(path: Path, data: bytes) -> None:
    """Write a file created 0600 from the start (no window in which it is world-readable)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class BlobFolder:
    """Content-addressed raw bytes in one folder (``<folder>/quarantine_blobs/<sha256>``)."""

    def __init__(self, folder: Path, key: str | bytes | None = None):
        self.folder = Path(folder)
        self._fernet = _fernet(key)

    @property
    def encrypted(self) -> bool:
        return self._fernet is not None

    def _path(self, digest: str) -> Path:
        return self.folder / QUARANTINE_BLOBS / (digest + (ENCRYPTED_SUFFIX if self.encrypted else ""))

    def put(self, blobs: dict[str, bytes]) -> int:
        """Store each blob under its sha256; returns the raw bytes stored."""
        if not blobs:
            return 0
        _private_dir(self.folder)
        _private_dir(self.folder / QUARANTINE_BLOBS)
        for digest, data in blobs.items():
            target = self._path(digest)
            if target.exists():  # content-addressed: the same bytes are already there
                continue
            write_private(target, self._fernet.encrypt(data) if self._fernet else data)
            if self._fernet is not None:  # a plaintext copy from before the key was set goes
                (self.folder / QUARANTINE_BLOBS / digest).unlink(missing_ok=True)
        return sum(len(d) for d in blobs.values())

    def seal(self) -> int:
        """Encrypt every plaintext blob kept before a key was configured; returns how many."""
        if self._fernet is None:
            raise RawStoreError(f"set {ENV_KEY} to seal the raw store")
        folder = self.folder / QUARANTINE_BLOBS
        plain = [p for p in folder.iterdir() if len(p.name) == 64] if folder.exists() else []
        for path in plain:
            self.put({path.name: self.get(path.name)})
        return len(plain)

    def get(self, digest: str) -> bytes:
        plain = self.folder / QUARANTINE_BLOBS / digest
        sealed = plain.with_name(digest + ENCRYPTED_SUFFIX)
        if sealed.exists():
            if self._fernet is None:
                raise RawStoreError(f"{sealed} is encrypted: set {ENV_KEY} to read it")
            from cryptography.fernet import InvalidToken

            _check_private(sealed)
            try:
                data = self._fernet.decrypt(sealed.read_bytes())
            except InvalidToken as exc:
                raise RawStoreError(
                    f"{sealed} does not decrypt with the configured {ENV_KEY} (another key, or damaged)"
                ) from exc
        elif plain.exists():
            _check_private(plain)
            data = plain.read_bytes()
        else:
            raise FileNotFoundError(
                f"no raw bytes {digest} in {self.folder / QUARANTINE_BLOBS} (purged, or never kept)"
            )
        if hashlib.sha256(data).hexdigest() != digest:
            raise RawStoreError(f"raw blob {digest} in {self.folder} does not match its sha256 (damaged)")
        return data


class RawStore:
    """The guarded raw store: one BlobFolder per corpus source."""

    def __init__(self, root: Path | str | None = None, key: str | bytes | None = None):
        self.root = Path(root).expanduser().resolve() if root else default_raw_store_path()
        self.key = key

    @classmethod
    def from_env(cls) -> "RawStore":
        return cls(default_raw_store_path(), os.environ.get(ENV_KEY) or None)

    @property
    def encrypted(self) -> bool:
        return bool(self.key)

    def source(self, source: str) -> BlobFolder:
        if not source or "/" in source or source.startswith("."):
            raise RawStoreError(f"{source!r} is not a source name")
        try:
            _private_dir(self.root)
        except OSError as exc:  # e.g. a shared folder such as /tmp, which this user cannot make private
            raise RawStoreError(
                f"the raw store {self.root} cannot be made private (mode {DIR_MODE:04o}): {exc}; "
                f"point {ENV_PATH} at a folder of its own"
            ) from exc
        return BlobFolder(self.root / source, self.key)

    def seal(self) -> int:
        """Encrypt every plaintext blob of every source (after setting a key); returns how many."""
        if not self.root.exists():
            return 0
        return sum(self.source(p.name).seal() for p in sorted(self.root.iterdir()) if p.is_dir())

    def purge(self, source: str) -> int:
        """Delete every raw byte kept for `source`; returns the number of files removed."""
        folder = self.source(source).folder
        if not folder.exists():
            return 0
        removed = sum(1 for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(folder)
        return removed
