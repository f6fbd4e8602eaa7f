"""A run whose process was SIGKILLed would hold the queue of one forever if nothing marked it
failed: the launcher's health check finds the dead worker, run monitoring fails the run,
the next queued run starts and the killed run is retried. Real code server,
real run processes, and the daemons' own iteration functions on the shipped dagster.yaml."""

import logging
import os
import signal
import textwrap
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.launcher import WorkerStatus
from dagster._core.test_utils import create_run_for_test, create_test_daemon_workspace_context, load_remote_repo
from dagster._core.workspace.load_target import PythonFileTarget
from dagster._daemon.auto_run_reexecution.auto_run_reexecution import consume_new_runs_for_automatic_reexecution
from dagster._daemon.monitoring.run_monitoring import execute_run_monitoring_iteration
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

from deepfeed.run_launcher import LocalProcessRunLauncher, worker_pid

REPO = Path(__file__).resolve().parents[2]
LOG = logging.getLogger("test_run_monitoring")
JOBS = textwrap.dedent("""
    import time
    import dagster as dg

    @dg.op
    def long_step():
        time.sleep(300)

    @dg.job
    def sleepy():
        long_step()

    defs = dg.Definitions(jobs=[sleepy])
""")


def _wait(predicate, what, timeout=90.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def daemon(tmp_path):
    shipped = yaml.safe_load((REPO / "dagster.yaml").read_text())
    overrides = {k: shipped[k] for k in ("run_coordinator", "run_launcher", "run_monitoring", "run_retries")}
    code = tmp_path / "jobs.py"
    code.write_text(JOBS)
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(overrides=overrides, temp_dir=str(tmp_path / "dagster")) as instance:
        target = PythonFileTarget(
            python_file=str(code), attribute=None, working_directory=str(REPO), location_name="jobs"
        )
        with create_test_daemon_workspace_context(target, instance) as context:
            yield instance, context


def _submit(instance, context):
    """A run as the UI creates one: snapshots from the code server, then the queue."""
    job = load_remote_repo(context, "__repository__").get_full_job("sleepy")
    location = next(iter(context.create_request_context().get_code_location_entries().values())).code_location
    plan = location.get_execution_plan(
        job, run_config={}, step_keys_to_execute=None, known_state=None, instance=instance
    )
    run = create_run_for_test(
        instance,
        job_name="sleepy",
        remote_job_origin=job.get_remote_origin(),
        job_code_origin=job.get_python_origin(),
        job_snapshot=job.job_snapshot,
        execution_plan_snapshot=plan.execution_plan_snapshot,
    )
    instance.submit_run(run.run_id, context.create_request_context())
    return run.run_id


def _status(instance, run_id):
    return instance.get_run_by_id(run_id).status


def _dequeue(context):
    list(QueuedRunCoordinatorDaemon(interval_seconds=1).run_iteration(context))


def test_killed_run_is_failed_by_the_monitor_and_the_queue_moves_on(daemon):
    instance, context = daemon
    assert isinstance(instance.run_launcher, LocalProcessRunLauncher) and instance.run_monitoring_enabled

    first = _submit(instance, context)
    _dequeue(context)
    pid, _ = _wait(
        lambda: _status(instance, first) == dg.DagsterRunStatus.STARTED and worker_pid(instance, first),
        "the first run's process",
    )
    second = _submit(instance, context)
    _dequeue(context)
    assert _status(instance, second) == dg.DagsterRunStatus.QUEUED  # one run at a time

    list(execute_run_monitoring_iteration(context, LOG))
    assert _status(instance, first) == dg.DagsterRunStatus.STARTED  # alive: left alone

    os.kill(pid, signal.SIGKILL)
    _wait(lambda: not _alive(pid), "the killed process to go")
    # What the monitor asks the launcher. (A live code server may report the death itself
    # first, "unexpectedly exited"; the check is for when nothing else does, e.g. the code
    # server went down with the run, so it is asked directly rather than raced.)
    health = instance.run_launcher.check_run_worker_health(instance.get_run_by_id(first))
    assert health.status == WorkerStatus.FAILED and str(pid) in health.msg

    list(execute_run_monitoring_iteration(context, LOG))
    assert _status(instance, first) == dg.DagsterRunStatus.FAILURE
    _dequeue(context)
    assert _status(instance, second) in (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED)

    # The killed run (no step failed) is retried; the retry waits in the queue behind the second run.
    list(consume_new_runs_for_automatic_reexecution(context, [instance.get_run_record_by_id(first)], LOG))
    retries = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/parent_run_id": first}))
    assert len(retries) == 1 and retries[0].status == dg.DagsterRunStatus.QUEUED

    second_pid, _ = _wait(lambda: worker_pid(instance, second), "the second run's process")
    os.kill(second_pid, signal.SIGKILL)
    _wait(lambda: not _alive(second_pid), "the second killed process to go")
    list(execute_run_monitoring_iteration(context, LOG))
    assert _status(instance, second) == dg.DagsterRunStatus.FAILURE
    instance.report_run_canceled(retries[0])  # leave nothing in flight


def _alive(pid):
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
