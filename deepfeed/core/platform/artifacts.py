"""The artifact store: versioned folders under a UPath root, written atomically.

Large artifacts (datasets, checkpoints, ONNX files) never go through a Dagster IO
manager. Each version is built in a local staging folder and only becomes visible when
complete: a local root gets an atomic rename, a remote root (s3://, gs://, ...) gets an
upload followed by the manifest, which is written last and marks the version complete.
Either way a failed run leaves the last good version untouched.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock, Timeout
from upath import UPath

MANIFEST = "manifest.json"
STAGING_PREFIX = ".staging-"
_LOCAL_PROTOCOLS = {"", "file", "local"}


class ArtifactStoreError(RuntimeError):
    pass


@dataclass(frozen=True)
class ArtifactHandle:
    """The small value an asset returns: where its artifact lives and what it holds."""

    name: str
    version: str
    uri: str
    content_hash: str
    counts: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def short_hash(self) -> str:
        return self.content_hash[:12]


def hash_folder(path: Path) -> str:
    """sha256 over every file's relative path and bytes, in sorted order."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        if file.name == MANIFEST:
            continue
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


class ArtifactStore:
    def __init__(self, root: str | os.PathLike, cache: str | os.PathLike | None = None):
        self.root = UPath(root)
        self.is_local = self.root.protocol in _LOCAL_PROTOCOLS
        if self.is_local:
            self.root = UPath(Path(str(self.root.path)).expanduser().resolve())
        self._cache = Path(cache) if cache else Path(tempfile.gettempdir()) / "deepfeed-artifact-cache"

    def check_writable(self) -> None:
        """Fail early, naming the root, rather than after an hour of training."""
        probe = self.root / f".write-probe-{uuid.uuid4().hex}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_text("ok")
            probe.unlink()
        except Exception as exc:  # any backend error means the same thing to the user
            raise ArtifactStoreError(
                f"artifact root {str(self.root)!r} is not writable: {type(exc).__name__}: {exc}"
            ) from exc

    @contextlib.contextmanager
    def new_version(
        self, name: str, metadata: dict[str, Any] | None = None, run_id: str = ""
    ) -> Iterator["PendingVersion"]:
        """Yield a local staging folder; on clean exit it becomes a new version."""
        self.check_writable()
        created = dt.datetime.now(dt.timezone.utc)
        # Microseconds keep versions made within one second in creation order (latest() sorts by name).
        version = created.strftime("%Y%m%dT%H%M%S.%f") + "-" + uuid.uuid4().hex[:6]
        staging_parent = Path(str(self.root.path)) / name if self.is_local else self._cache / "staging" / name
        staging_parent.mkdir(parents=True, exist_ok=True)
        staging = staging_parent / f"{STAGING_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
        # Held while the version is written (taken before the folder exists): the kernel drops it
        # when this process dies, even by SIGKILL, which is how clean_stale_staging tells a
        # leaked folder from one being written.
        owner = FileLock(str(_owner_lock(staging)), timeout=0, thread_local=False)
        owner.acquire()
        staging.mkdir(mode=0o700)
        pending = PendingVersion(
            path=staging, counts=dict(metadata or {}), version=version, uri=str(self.root / name / version)
        )
        try:
            yield pending
            content_hash = hash_folder(staging)
            handle = ArtifactHandle(
                name=name,
                version=version,
                uri=str(self.root / name / version),
                content_hash=content_hash,
                counts=pending.counts,
                created_at=created.isoformat(),
            )
            manifest = {**handle.to_dict(), "run_id": run_id}
            if self.is_local:
                (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
                staging.chmod(0o755)
                os.rename(staging, staging_parent / version)
            else:
                target = self.root / name / version
                target.fs.put(str(staging), target.path, recursive=True)
                (target / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
                shutil.rmtree(staging, ignore_errors=True)
            pending.handle = handle
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            owner.release()
            _owner_lock(staging).unlink(missing_ok=True)

    def staging_parents(self) -> list[Path]:
        if self.is_local:
            root = Path(str(self.root.path))
            return [p for p in root.iterdir() if p.is_dir()] if root.exists() else []
        cache = self._cache / "staging"
        return [p for p in cache.iterdir() if p.is_dir()] if cache.exists() else []

    def clean_stale_staging(self) -> list[Path]:
        """Delete staging folders whose writer died (a killed run leaks one per save, the size
        of a checkpoint); folders still being written are kept. Returns what was deleted."""
        removed = []
        for parent in self.staging_parents():
            for staging in parent.glob(f"{STAGING_PREFIX}*"):
                if not staging.is_dir():
                    continue
                lock = FileLock(str(_owner_lock(staging)), timeout=0, thread_local=False)
                try:
                    lock.acquire()
                except Timeout:
                    continue  # its writer is alive
                try:
                    shutil.rmtree(staging, ignore_errors=True)
                    removed.append(staging)
                finally:
                    lock.release()
                    _owner_lock(staging).unlink(missing_ok=True)
        return removed

    def local_path(self, handle: ArtifactHandle | str) -> Path:
        """A local folder holding the version (downloaded once for remote roots)."""
        uri = handle.uri if isinstance(handle, ArtifactHandle) else handle
        path = UPath(uri)
        if path.protocol in _LOCAL_PROTOCOLS:
            local = Path(str(path.path))
        else:
            local = self._cache / "download" / hashlib.sha1(uri.encode()).hexdigest()[:16]
            if not (local / MANIFEST).exists():
                path.fs.get(path.path, str(local), recursive=True)
        if not (local / MANIFEST).exists():
            raise ArtifactStoreError(f"artifact {uri} is incomplete or missing (no {MANIFEST})")
        return local

    def versions(self, name: str) -> list[str]:
        folder = self.root / name
        if not folder.exists():
            return []
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and (p / MANIFEST).exists())

    def latest(self, name: str) -> ArtifactHandle | None:
        versions = self.versions(name)
        if not versions:
            return None
        manifest = json.loads((self.root / name / versions[-1] / MANIFEST).read_text())
        manifest.pop("run_id", None)
        return ArtifactHandle(**manifest)


def _owner_lock(staging: Path) -> Path:
    # Beside the folder, not in it: the folder's files are hashed and published.
    return staging.with_name(staging.name + ".lock")


@dataclass
class PendingVersion:
    path: Path
    counts: dict[str, Any]
    handle: ArtifactHandle | None = None
    # Where the version will appear once published: known before, so what must accompany
    # the publication (its audit entries) can be announced first.
    version: str = ""
    uri: str = ""
