"""Real services on loopback for the deployment tests: a throw-away PostgreSQL cluster
and an `mlflow server`, each started in a temporary folder and stopped afterwards.

They are started as processes rather than mocked because what these tests prove is that
the production configuration talks to the real engines.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

# Generous: on a loaded 2-core CI machine the MLflow server has needed over a minute.
STARTUP_TIMEOUT_S = 180


class ServiceUnavailable(RuntimeError):
    """The service cannot be started on this machine; the message says why."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceUnavailable(f"exited with {process.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise ServiceUnavailable(f"not listening on 127.0.0.1:{port} after {STARTUP_TIMEOUT_S}s: {log.read_text()[-2000:]}")


# ------------------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    username: str
    password: str
    db_name: str

    @property
    def url(self) -> str:
        return f"postgresql://{self.username}:{self.password}@{self.host}:{self.port}/{self.db_name}"

    def env(self) -> dict[str, str]:
        """The variables deploy/dagster.yaml reads."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USERNAME": self.username,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": self.db_name,
        }


def postgres_bin() -> Path:
    """Debian installs the server binaries off PATH, under /usr/lib/postgresql/<major>/bin."""
    on_path = shutil.which("initdb")
    if on_path:  # may be a symlink into the versioned folder that also holds pg_ctl
        return Path(on_path).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if not found:
        raise ServiceUnavailable(
            "PostgreSQL server binaries (initdb, pg_ctl) are not installed: "
            "`apt-get install -y postgresql` (bash .ci/services.sh does it)"
        )
    return Path(found[-1]).parent


def _as_postgres_user(argv: list[str]) -> list[str]:
    # initdb refuses to run as root; CI runs as root, a developer usually not.
    if os.geteuid() != 0:
        return argv
    if shutil.which("runuser") is None:
        raise ServiceUnavailable("running as root without `runuser` to drop to the postgres user")
    return ["runuser", "-u", "postgres", "--", *argv]


def _create_database(port: int, username: str, password: str, db_name: str) -> None:
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=port, user=username, password=password, dbname="postgres")
    connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{db_name}"')
    finally:
        connection.close()


@contextlib.contextmanager
def postgres_server(
    username: str = "deepfeed", password: str = "deepfeed-test", db_name: str = "dagster"
) -> Iterator[Postgres]:
    binaries = postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="deepfeed-pg-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
        data, log, pwfile = folder / "data", folder / "server.log", folder / "pw"
        pwfile.write_text(password + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        port = free_port()
        subprocess.run(
            _as_postgres_user(
                [
                    str(binaries / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    username,
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        # Loopback only, a private socket folder, and no fsync: the data is thrown away.
        options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder} -c fsync=off"
        subprocess.run(
            _as_postgres_user(
                [str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"]
            ),
            check=True,
            capture_output=True,
            timeout=90,
        )
        try:
            _create_database(port, username, password, db_name)
            yield Postgres("127.0.0.1", port, username, password, db_name)
        finally:
            subprocess.run(
                _as_postgres_user([str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                capture_output=True,
                timeout=60,
            )
    except subprocess.CalledProcessError as exc:
        raise ServiceUnavailable(f"{exc.cmd[-1]!r} failed: {(exc.stderr or b'').decode()[-2000:]}") from exc
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------- MLflow server


@contextlib.contextmanager
def mlflow_server(folder: Path, backend_store_uri: str | None = None) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 with a database backend and a served artifact root;
    yields the tracking URI (http://127.0.0.1:PORT)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / "mlflow-server.log"
    mlflow = Path(sys.executable).parent / "mlflow"
    argv = [
        str(mlflow),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        backend_store_uri or f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination",
        str(folder / "artifacts"),
    ]
    # No background job runner (huey workers for MLflow's GenAI jobs): nothing here uses
    # it, and its extra Python processes double the start-up time on two cores.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_for_port(port, process, log)
        uri = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:  # the port opens before the app has finished its database migrations
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise ServiceUnavailable(f"mlflow server never became healthy: {log.read_text()[-2000:]}") from None
                time.sleep(0.3)
        yield uri
    finally:
        # The server forks workers into its own session: end that whole group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(timeout=10)
