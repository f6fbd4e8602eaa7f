"""Dagster's default run launcher, plus the worker health check that run monitoring needs.

Dagster's DefaultRunLauncher starts each run as a process of the code server but cannot
tell the run monitor whether that process is still alive, so a run whose process was
SIGKILLed (OOM killer, `kill -9`, a reboot) stays STARTED forever and, with a run queue of
one, blocks every later run. The run worker reports its pid in the event log ("Started
process for run (pid: N)"); this launcher answers the monitor from that pid, on the one
machine where the embedded default (and deploy/dagster-single-server.yaml) run everything.
Kubernetes has its own check (dagster_k8s.K8sRunLauncher).
"""

from __future__ import annotations

import datetime as dt

from dagster import DagsterEventType, DagsterRun
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus

# A pid reused by a process started this long after the run worker reported it is not the worker.
_PID_REUSE_SLACK_S = 5.0


def worker_pid(instance, run_id: str) -> tuple[int, float] | None:
    """(pid, unix time it was reported) of the run worker, from its engine event."""
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ENGINE_EVENT).records
    for record in reversed(records):  # a resumed or re-executed worker reports a newer pid
        event = record.event_log_entry.dagster_event
        pid = (event.engine_event_data.metadata or {}).get("pid") if event and event.engine_event_data else None
        if pid is not None:
            return int(pid.value), record.event_log_entry.timestamp
    return None


def process_alive(pid: int, reported_at: float) -> bool:
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return process.create_time() <= reported_at + _PID_REUSE_SLACK_S
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


class LocalProcessRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher whose runs the run monitor can check (same machine only)."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        found = worker_pid(self._instance, run.run_id)
        if found is None:
            # STARTED before its worker reported a pid: still starting up (start_timeout_seconds
            # and max_runtime_seconds bound that).
            return CheckRunHealthResult(WorkerStatus.RUNNING, "run worker has not reported its pid yet")
        pid, reported_at = found
        if process_alive(pid, reported_at):
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"run worker pid {pid} is alive")
        when = dt.datetime.fromtimestamp(reported_at, dt.timezone.utc).isoformat(timespec="seconds")
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"run worker pid {pid} (started {when}) is gone: killed, or its machine restarted"
        )
