"""A save killed by SIGKILL leaks its staging folder; the next start removes it, and never
the folder of a save still in progress."""

import os
import signal
import subprocess
import sys
import textwrap

from deepfeed.core.platform.artifacts import STAGING_PREFIX, ArtifactStore

WRITER = textwrap.dedent("""
    import sys, time
    from deepfeed.core.platform.artifacts import ArtifactStore
    with ArtifactStore(sys.argv[1]).new_version("finetuned_model") as version:
        (version.path / "weights.bin").write_bytes(b"x" * 4096)
        print(version.path, flush=True)
        time.sleep(600)
""")


def _start_writer(root):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], stdout=subprocess.PIPE, text=True, env=env)
    return process, process.stdout.readline().strip()


def _staging(root):
    return sorted(p for p in (root / "finetuned_model").iterdir() if p.name.startswith(STAGING_PREFIX) and p.is_dir())


def test_killed_save_is_cleaned_and_a_live_one_is_kept(tmp_path):
    root = tmp_path / "artifacts"
    killed, killed_path = _start_writer(root)
    live, live_path = _start_writer(root)
    try:
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        assert {str(p) for p in _staging(root)} == {killed_path, live_path}

        removed = ArtifactStore(root).clean_stale_staging()
        assert [str(p) for p in removed] == [killed_path]
        assert [str(p) for p in _staging(root)] == [live_path]
        assert ArtifactStore(root).versions("finetuned_model") == []
    finally:
        live.kill()
        live.wait()
    assert [str(p) for p in ArtifactStore(root).clean_stale_staging()] == [live_path]
    assert _staging(root) == [] and not list((root / "finetuned_model").iterdir())


def test_a_finished_save_leaves_no_lock_behind(tmp_path):
    store = ArtifactStore(tmp_path)
    with store.new_version("thing") as version:
        (version.path / "a.txt").write_text("a")
    assert [p.name for p in (tmp_path / "thing").iterdir()] == [version.handle.version]
    assert store.clean_stale_staging() == []
