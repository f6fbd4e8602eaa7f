"""The guarded raw store: private permissions, optional encryption, purge per source."""

import hashlib
import os
import stat

import pytest

from deepfeed.core.data.ingest import resolve_quarantine_ref, write_quarantine_blobs
from deepfeed.core.data.raw_store import RawStore, RawStoreError, new_key

SECRET = b'{"text": "write to zq.canary.7731@example.org"'
DIGEST = hashlib.sha256(SECRET).hexdigest()


def _modes(folder):
    return {p.relative_to(folder).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}


def test_files_are_private_from_the_start_whatever_the_umask(tmp_path):
    old = os.umask(0o000)  # the most permissive umask: modes must not depend on it
    try:
        store = RawStore(tmp_path / "raw")
        write_quarantine_blobs(store.source("clinic").folder, {DIGEST: SECRET})
    finally:
        os.umask(old)
    modes = _modes(tmp_path / "raw")
    assert modes == {
        ".": 0o700,
        "clinic": 0o700,
        "clinic/quarantine_blobs": 0o700,
        f"clinic/quarantine_blobs/{DIGEST}": 0o600,
    }
    assert resolve_quarantine_ref(store.source("clinic").folder, f"quarantine_blobs/{DIGEST}") == SECRET


def test_with_a_key_the_bytes_at_rest_are_encrypted_and_need_the_key(tmp_path):
    key = new_key()
    folder = RawStore(tmp_path / "raw", key).source("clinic").folder
    write_quarantine_blobs(folder, {DIGEST: SECRET}, key)
    [sealed] = (folder / "quarantine_blobs").iterdir()
    assert (
        sealed.name == DIGEST + ".fernet" and b"canary" not in sealed.read_bytes() and b"zq." not in sealed.read_bytes()
    )
    assert resolve_quarantine_ref(folder, f"quarantine_blobs/{DIGEST}", key) == SECRET
    with pytest.raises(ValueError, match="encrypted: set DEEPFEED_RAW_STORE_KEY"):
        resolve_quarantine_ref(folder, f"quarantine_blobs/{DIGEST}")
    with pytest.raises(ValueError, match="does not decrypt"):
        resolve_quarantine_ref(folder, f"quarantine_blobs/{DIGEST}", new_key())
    with pytest.raises(RawStoreError, match="not a valid Fernet key"):
        RawStore(tmp_path / "raw", "not a key").source("clinic").put({DIGEST: SECRET})


def test_a_store_opened_to_others_is_refused(tmp_path):
    folder = RawStore(tmp_path / "raw").source("clinic").folder
    write_quarantine_blobs(folder, {DIGEST: SECRET})
    (folder / "quarantine_blobs" / DIGEST).chmod(0o644)
    with pytest.raises(ValueError, match="readable by others"):
        resolve_quarantine_ref(folder, f"quarantine_blobs/{DIGEST}")


def test_purge_deletes_one_sources_raw_bytes_only(tmp_path):
    store = RawStore(tmp_path / "raw")
    for source in ("clinic", "wiki"):
        write_quarantine_blobs(store.source(source).folder, {DIGEST: SECRET})
    assert store.purge("clinic") == 1 and store.purge("clinic") == 0
    assert (
        not (tmp_path / "raw" / "clinic").exists()
        and (tmp_path / "raw" / "wiki" / "quarantine_blobs" / DIGEST).exists()
    )
    with pytest.raises(RawStoreError, match="not a source name"):
        store.purge("../wiki")


def test_the_location_and_key_come_from_the_environment(tmp_path, monkeypatch):
    key = new_key()
    monkeypatch.setenv("DEEPFEED_RAW_STORE", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("DEEPFEED_RAW_STORE_KEY", key)
    store = RawStore.from_env()
    assert store.root == (tmp_path / "elsewhere").resolve() and store.encrypted and store.source("s").encrypted


def test_sealing_encrypts_blobs_kept_before_the_key_was_set(tmp_path):
    plain = RawStore(tmp_path / "raw")
    write_quarantine_blobs(plain.source("clinic").folder, {DIGEST: SECRET})
    key = new_key()
    sealed = RawStore(tmp_path / "raw", key)
    assert sealed.seal() == 1 and sealed.seal() == 0
    files = [p for p in (tmp_path / "raw").rglob("*") if p.is_file()]
    assert [p.name for p in files] == [DIGEST + ".fernet"] and all(b"canary" not in p.read_bytes() for p in files)
    assert sealed.source("clinic").get(DIGEST) == SECRET
    with pytest.raises(RawStoreError, match="set DEEPFEED_RAW_STORE_KEY"):
        plain.seal()
