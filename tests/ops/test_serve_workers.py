"""`deepfeed serve --workers 2`: a supervisor killed outright takes its workers with it,
so the port is free for the next server instead of held by orphans."""

from __future__ import annotations

import os
import signal
import socket
import time

import psutil

from deepfeed.serve.app import ServeSettings
from deepfeed.serve.process import ServerProcess
from tests.serve.conftest import empty_registry_db, registry, user_salt  # noqa: F401 (fixtures)


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_workers_exit_when_the_supervisor_is_killed(deepfeed_env, registry):  # noqa: F811
    settings = ServeSettings(tracking_uri=registry.uri, runtime="torch", poll_seconds=0, home=deepfeed_env)
    server = ServerProcess(settings, workers=2).start(timeout_s=240, wait_for_champion=False)
    try:
        supervisor = psutil.Process(server.proc.pid)
        workers = [p for p in supervisor.children() if p.is_running()]
        assert len(workers) >= 2, workers  # uvicorn's worker processes (and its resource tracker)
        assert not _port_is_free(server.port)
        os.kill(server.proc.pid, signal.SIGKILL)  # the supervisor only: no chance to stop its workers
        server.proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not _port_is_free(server.port):
            time.sleep(0.2)
        assert _port_is_free(server.port), "orphaned workers still hold the port"
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, alive
    finally:
        try:
            os.killpg(server.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.stop()
