"""The server as a child process on loopback: for the loop test, the crash test and the
load benchmark, which must talk to a real uvicorn over TCP (and be able to kill it)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from deepfeed.serve.app import ServeSettings
from deepfeed.serve.cli import SETTINGS_ENV, settings_to_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(
        self, settings: ServeSettings, port: int | None = None, workers: int = 1, log_file: Path | None = None
    ):
        self.settings, self.workers = settings, workers
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = log_file or settings.home / f"server-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120, wait_for_champion: bool = True) -> ServerProcess:
        import httpx

        env = {**os.environ, SETTINGS_ENV: settings_to_env(self.settings)}
        self._log = open(self.log_file, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "deepfeed.serve.cli:app_factory",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_file}")
            try:
                health = httpx.get(f"{self.url}/health", timeout=2).json()
                if not wait_for_champion or "champion" in health["versions"]:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"server not ready after {timeout_s} s; see {self.log_file}")

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, no shutdown hooks."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
