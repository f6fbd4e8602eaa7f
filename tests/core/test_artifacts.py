import json

import pytest

from deepfeed.core.platform.artifacts import ArtifactStore, ArtifactStoreError


def test_versions_are_atomic_and_hashed(tmp_path):
    store = ArtifactStore(tmp_path / "root")
    with store.new_version("thing", {"rows": 3}, run_id="run-1") as version:
        (version.path / "a.txt").write_text("hello")
    handle = version.handle
    folder = store.local_path(handle)
    assert (folder / "a.txt").read_text() == "hello"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["content_hash"] == handle.content_hash and manifest["run_id"] == "run-1"
    assert store.latest("thing") == handle


def test_failed_write_leaves_last_good_version(tmp_path):
    store = ArtifactStore(tmp_path / "root")
    with store.new_version("thing") as good:
        (good.path / "a.txt").write_text("good")
    with pytest.raises(RuntimeError):
        with store.new_version("thing") as bad:
            (bad.path / "a.txt").write_text("half")
            raise RuntimeError("training diverged")
    assert store.versions("thing") == [good.handle.version]
    assert not [p for p in (tmp_path / "root" / "thing").iterdir() if p.name.startswith(".staging")]


def test_same_content_same_hash(tmp_path):
    store = ArtifactStore(tmp_path)
    hashes = []
    for _ in range(2):
        with store.new_version("x") as v:
            (v.path / "f").write_bytes(b"data")
        hashes.append(v.handle.content_hash)
    assert hashes[0] == hashes[1]


def test_unwritable_root_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ArtifactStoreError, match="not writable"):
        ArtifactStore(blocker / "root").check_writable()


def test_remote_root_through_fsspec_memory_filesystem():
    store = ArtifactStore("memory://deepfeed-test/root")
    with store.new_version("remote") as version:
        (version.path / "weights.bin").write_bytes(b"\x01\x02")
    handle = version.handle
    assert handle.uri.startswith("memory://")
    assert store.versions("remote") == [handle.version]
    assert (store.local_path(handle) / "weights.bin").read_bytes() == b"\x01\x02"


def test_latest_is_the_last_written_even_within_one_second(tmp_path):
    store = ArtifactStore(tmp_path)
    written = []
    for i in range(12):
        with store.new_version("burst", {"i": i}) as v:
            (v.path / "f").write_text(str(i))
        written.append(v.handle.version)
    assert store.versions("burst") == written
    assert store.latest("burst").counts["i"] == 11
