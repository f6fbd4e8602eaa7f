"""`deepfeed` command line: run the demo, ingest corpora, serve, plan and maintain the embedded default."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from deepfeed.pipelines import presets

REPO_DAGSTER_YAML = Path(__file__).resolve().parent.parent / "dagster.yaml"


def _step(message: str) -> float:
    print(f"==> {message}", flush=True)
    return time.perf_counter()


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME defaults to $DEEPFEED_HOME/dagster, with the project's dagster.yaml."""
    from deepfeed.core.platform.locations import Locations

    home = Path(os.environ.get("DAGSTER_HOME") or Locations.from_environment().dagster_home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    if REPO_DAGSTER_YAML.exists() and not (home / "dagster.yaml").exists():
        shutil.copy(REPO_DAGSTER_YAML, home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def cmd_prepare(_: argparse.Namespace) -> int:
    from deepfeed.core.data.demo_corpus import ensure_demo_corpus
    from deepfeed.core.platform.home import ensure_nltk_data, ensure_smollm2
    from deepfeed.settings import demo_corpus_dir

    started = _step("offline resources (cached under $DEEPFEED_HOME/cache)")
    print(f"    base model : {ensure_smollm2()}")
    print(f"    NLTK data  : {ensure_nltk_data()}")
    print(f"    demo corpus: {ensure_demo_corpus(demo_corpus_dir())}")
    print(f"    ready in {time.perf_counter() - started:.1f}s")
    return 0


def ingest_sources(instance, corpus_path: str = "") -> dict[str, bool]:
    """What corpus_source_sensor does, at once: register the sources under the corpus root
    (empty: the demo corpus) as raw_corpus partitions and ingest the new or changed ones.
    Returns source -> run succeeded."""
    from deepfeed.definitions import defs
    from deepfeed.sensors.corpus import ingest_run_config, plan_source_runs

    store = defs.resources["artifact_store"].store()
    new, stale = plan_source_runs(instance, store, corpus_path)
    if new:
        instance.add_dynamic_partitions("corpus_source", new)
    job = defs.resolve_job_def("corpus_ingest_job")
    outcome = {}
    from tqdm import tqdm

    for source in tqdm(stale, desc="ingesting sources", unit="source", disable=not stale):
        result = job.execute_in_process(
            partition_key=source,
            instance=instance,
            raise_on_error=False,
            run_config={**ingest_run_config(corpus_path), "loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        outcome[source] = result.success
    return outcome


def cmd_ingest(args: argparse.Namespace) -> int:
    from deepfeed.core.data.ingest import CorpusSourceError
    from deepfeed.settings import default_corpus_path

    ensure_dagster_home()
    import dagster as dg

    corpus = args.corpus if args.corpus is not None else default_corpus_path()
    _step(f"ingesting new or changed sources of {corpus or 'the demo corpus'}")
    try:
        outcome = ingest_sources(dg.DagsterInstance.get(), corpus)
    except CorpusSourceError as exc:
        print(f"deepfeed ingest: {exc}", file=sys.stderr)
        return 2
    for source, ok in outcome.items():
        print(f"    {source:<24} {'ingested' if ok else 'FAILED (see `make ui` for the step logs)'}")
    if not outcome:
        print("    every source is up to date")
    from deepfeed.sensors.corpus import missing_sources

    for source in missing_sources(dg.DagsterInstance.get(), corpus):
        print(
            f"    {source:<24} GONE from the corpus root: its last version is still trained on; "
            f"`deepfeed retire-source {source} --reason ...` stops that"
        )
    return 0 if all(outcome.values()) else 1


def cmd_prune_artifacts(args: argparse.Namespace) -> int:
    from deepfeed.core.data import retention
    from deepfeed.definitions import defs

    store, mlflow = defs.resources["artifact_store"].store(), defs.resources["mlflow"]
    try:
        doomed, protected = retention.prune(
            store,
            mlflow.client(),
            mlflow.registered_model_name,
            args.keep,
            args.dry_run,
            None if args.dry_run else defs.resources["locations"].audit_ledger(),
        )
    except ValueError as exc:
        print(f"deepfeed prune-artifacts: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the registry could not be read: what serves is unknown
        print(
            f"deepfeed prune-artifacts: cannot read the MLflow registry at {mlflow.tracking_uri} "
            f"({type(exc).__name__}: {exc}); "
            "nothing was deleted, since the champion and the rollback target would be unknown",
            file=sys.stderr,
        )
        return 2
    for version, aliases in sorted(protected.items()):
        print(f"    kept (registry {aliases}): {version}")
    verb = "would delete" if args.dry_run else "deleted"
    for item in doomed:
        print(f"    {verb}: {item.name}/{item.version}  {item.bytes / 2**20:,.0f} MiB")
    print(
        f"{verb} {len(doomed)} version(s), {sum(d.bytes for d in doomed) / 2**30:.2f} GiB; the newest "
        f"{args.keep} of each model artifact stay"
    )
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from deepfeed.core.loop.registry import RegistryError, rollback
    from deepfeed.definitions import defs

    mlflow, locations = defs.resources["mlflow"], defs.resources["locations"]
    try:
        move = rollback(
            mlflow.client(),
            mlflow.registered_model_name,
            args.reason,
            "deepfeed rollback",
            locations.audit_ledger(),
            expected_champion=args.expected_champion or None,
        )
    except RegistryError as exc:
        print(f"deepfeed rollback: {exc}", file=sys.stderr)
        return 2
    except MlflowException as exc:  # unreachable registry or store: nothing was moved
        print(f"deepfeed rollback: the MLflow registry at {mlflow.tracking_uri} failed: {exc}", file=sys.stderr)
        return 2
    print(
        f"{move.model}: champion v{move.from_version} -> v{move.to_version} (servers follow on their next poll); "
        f"recorded in {locations.audit_ledger().path}"
    )
    return 0


def cmd_retire_source(args: argparse.Namespace) -> int:
    ensure_dagster_home()
    import dagster as dg

    from deepfeed.definitions import defs
    from deepfeed.sensors.corpus import retire_source

    try:
        kept_at = retire_source(
            dg.DagsterInstance.get(),
            defs.resources["artifact_store"].store(),
            args.source,
            args.reason,
            defs.resources["locations"].audit_ledger(),
            purge_raw=args.purge_raw,
        )
    except ValueError as exc:
        print(f"deepfeed retire-source: {exc}", file=sys.stderr)
        return 2
    print(f"retired {args.source}: the next clean_corpus no longer reads it (audit ledger: action 'retired').")
    if kept_at:
        print(f"its raw versions stay on disk, the last at {kept_at}; earlier clean_corpus versions still name them.")
    if args.purge_raw:
        print("its raw (unscrubbed) bytes were deleted from the raw store.")
    return 0


def _stage_timings(instance, run_id: str) -> list[tuple[str, float]]:
    stats = instance.get_run_step_stats(run_id)
    return [
        (s.step_key, (s.end_time or 0) - (s.start_time or 0)) for s in sorted(stats, key=lambda s: s.start_time or 0)
    ]


# The demo's sizes live with the other run-config presets; re-exported for the benchmarks.
DEMO_SIZES = presets.DEMO_SIZES


def _failed_steps(instance, run_id: str) -> list[str]:
    from dagster import DagsterEventType

    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_FAILURE).records
    return sorted({r.event_log_entry.step_key for r in records})


def cmd_demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    total = time.perf_counter()
    cmd_prepare(args)
    dagster_home = ensure_dagster_home()
    # The demo's own secrets (user-id salt, audit-ledger key), 0600 under its home; production
    # mounts them from a secret store instead (docs/security.md).
    from deepfeed.core.platform.secrets import AUDIT_KEY, USER_SALT, ensure_secret

    for spec in (USER_SALT, AUDIT_KEY):
        ensure_secret(spec)

    import dagster as dg

    from deepfeed.definitions import defs
    from deepfeed.resources.mlflow_tracking import mlflow_ui_command
    from deepfeed.settings import default_artifact_root

    instance = dg.DagsterInstance.get()
    from deepfeed.settings import default_corpus_path

    _step("ingesting the corpus sources (raw_corpus partitions; $DEEPFEED_CORPUS or the demo corpus)")
    failed_sources = [s for s, ok in ingest_sources(instance, default_corpus_path()).items() if not ok]
    if failed_sources:
        print(f"\nIngesting {', '.join(failed_sources)} failed; see `make ui` for the step logs.", file=sys.stderr)
        return 1
    _step(f"materializing the whole asset graph (Dagster instance: {dagster_home})")
    job = defs.resolve_job_def("full_chain_job")
    # INFO keeps the console to progress lines; DEBUG events stay in the instance for the UI.
    run_config = {"loggers": {"console": {"config": {"log_level": "INFO"}}}, "ops": DEMO_SIZES}
    result = job.execute_in_process(instance=instance, run_config=run_config, raise_on_error=False)
    print("\nStage timings:")
    timings = _stage_timings(instance, result.run_id)
    width = max([len(step) for step, _ in timings] + [18])
    for step, seconds in timings:
        print(f"    {step:<{width}} {seconds:7.1f} s")
    print(f"    {'total (with setup)':<{width}} {time.perf_counter() - total:7.1f} s")
    failed = _failed_steps(instance, result.run_id)
    # A challenger that loses to the champion fails the blocking promotion_gate check (so
    # champion_model is not materialized): the chain itself finished and the report says why.
    kept_champion = bool(failed) and all(step.endswith("_promotion_gate") for step in failed)
    if not result.success and not kept_champion:
        print(
            f"\nThe run failed ({result.run_id}) in {', '.join(failed) or 'setup'}; see `make ui` for the step logs.",
            file=sys.stderr,
        )
        return 1
    if kept_champion:
        print("\nThe challenger did not pass the promotion gate: the champion stays (reasons in the report).")
    report = Path(default_artifact_root())
    latest = sorted((report / "evaluation_report").glob("2*"))
    print("\nWhere to look:")
    if latest:
        print(f"    evaluation report : {latest[-1] / 'report.html'}")
        print(f"                        {latest[-1] / 'report.md'}")
    print("    Dagster UI        : make ui   (http://127.0.0.1:3000)")
    print(f"    MLflow UI         : .venv/bin/{mlflow_ui_command()}")
    return 0


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from deepfeed.tools.tiny_models import build_tiny_checkpoint

    texts = ["hello world, how are you today?", "你好，世界。今天怎么样？", "The capital of France is Paris."] * 20
    path = build_tiny_checkpoint(Path(args.output), texts, architecture=args.architecture)
    print(path)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from deepfeed.tools.planner import PlannerError, plan

    try:
        result = plan(args.model, args.context, args.batch, gpus=args.gpus, lora_rank=args.lora_rank)
    except PlannerError as exc:
        print(f"deepfeed plan: {exc}", file=sys.stderr)
        return 2
    print(result.to_table())
    return 0


def _dagster_instance_check():
    """Open the instance a run would use (DAGSTER_HOME) and read from its run storage."""
    from deepfeed.core.platform.locations import Locations
    from deepfeed.tools.doctor import FAIL, PASS, CheckResult

    home = os.environ.get("DAGSTER_HOME") or str(Locations.from_environment().dagster_home)
    if not (Path(home) / "dagster.yaml").exists():
        return CheckResult(
            "dagster instance",
            FAIL,
            f"no dagster.yaml in DAGSTER_HOME={home} (`deepfeed demo` or `make ui` writes one)",
        )
    try:
        import dagster as dg

        with dg.DagsterInstance.from_config(home) as instance:
            runs = instance.get_runs_count()
            storage = type(instance.run_storage).__name__
            launcher = instance.get_ref().run_launcher_data
    except Exception as exc:  # storage drivers raise their own errors
        return CheckResult("dagster instance", FAIL, f"DAGSTER_HOME={home}: {type(exc).__name__}: {str(exc)[:300]}")
    launcher_name = launcher.class_name if launcher else "DefaultRunLauncher"
    return CheckResult("dagster instance", PASS, f"{home}: {storage}, {runs} run(s), {launcher_name}")


def cmd_doctor(args: argparse.Namespace) -> int:
    from deepfeed.tools.doctor import DoctorConfig, GiB, failed, render_table, run_checks

    config = DoctorConfig(
        model=args.model,
        scenario=args.scenario,
        require_gpu=args.require_gpu,
        min_free_bytes=args.min_free_gib * GiB if args.min_free_gib is not None else None,
        extra=[_dagster_instance_check],
    )
    results = run_checks(config)
    print(render_table(results))
    return 1 if failed(results) else 0


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("deepfeed")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def cmd_run_config(args: argparse.Namespace) -> int:
    from deepfeed.definitions import defs
    from deepfeed.run_config_template import run_config_template

    names = sorted(job.name for job in defs.jobs or [])
    if args.job not in names:
        print(f"deepfeed run-config: no job {args.job!r}; jobs: {', '.join(names)}", file=sys.stderr)
        return 2
    print(run_config_template(defs.resolve_job_def(args.job)), end="")
    return 0


def cmd_access_add_key(args: argparse.Namespace) -> int:
    from deepfeed.core.platform.access import PolicyError
    from deepfeed.core.platform.access_keys import add_key
    from deepfeed.core.platform.home import deepfeed_home
    from deepfeed.serve.cli import default_policy_path

    home = deepfeed_home()
    path = Path(args.policy) if args.policy else default_policy_path(home) or home / "access_policy.yaml"
    try:
        key = add_key(path, args.principal, args.role)
    except PolicyError as exc:
        print(f"deepfeed access add-key: {exc}", file=sys.stderr)
        return 2
    print(
        f"added a key for {args.principal} (role {args.role}) to {path} (only its sha256 is stored; "
        "this is the one time the key is shown):",
        file=sys.stderr,
    )
    print(key)
    return 0


def _add_ops_commands(commands) -> None:
    run_config = commands.add_parser(
        "run-config",
        help="print a run-config YAML template of a job (every op's config, "
        "defaults and descriptions) for `dagster job launch -c` or the launchpad",
    )
    run_config.add_argument("--job", default="full_chain_job", help="job name (default full_chain_job)")
    run_config.set_defaults(func=cmd_run_config)
    access = commands.add_parser("access", help="manage the serving access policy (API keys and roles)")
    access_commands = access.add_subparsers(dest="access_command", required=True)
    add = access_commands.add_parser("add-key", help="create an API key for a principal and role; prints the key once")
    add.add_argument("--principal", required=True, help="who holds the key (recorded with every request it makes)")
    add.add_argument(
        "--role", required=True, help="a role of the policy (a new policy file has annotator and operator)"
    )
    add.add_argument(
        "--policy", default=None, help="policy file, created when missing (default $DEEPFEED_HOME/access_policy.yaml)"
    )
    add.set_defaults(func=cmd_access_add_key)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepfeed", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "prepare", help="build the offline resources (base model, NLTK data, demo corpus)"
    ).set_defaults(func=cmd_prepare)
    ingest = commands.add_parser(
        "ingest",
        help="register the sources under the corpus root as raw_corpus partitions and ingest the new or changed ones",
    )
    ingest.add_argument("--corpus", default=None, help="corpus root (default: $DEEPFEED_CORPUS, else the demo corpus)")
    ingest.set_defaults(func=cmd_ingest)
    retire = commands.add_parser(
        "retire-source",
        help="stop cleaning and training on a corpus source (removes its raw_corpus partition; recorded in the "
        "audit ledger)",
    )
    retire.add_argument("source", help="the source's partition key (its folder name)")
    retire.add_argument(
        "--reason", required=True, help="why, for the audit ledger (e.g. 'withdrawn by the data owner, ticket 123')"
    )
    retire.add_argument(
        "--purge-raw",
        action="store_true",
        help="also delete the source's raw (unscrubbed) bytes from the guarded raw store (docs/privacy.md)",
    )
    retire.set_defaults(func=cmd_retire_source)
    rollback = commands.add_parser(
        "rollback",
        help="move the champion alias back to the previous version by hand (recorded in the audit ledger)",
    )
    rollback.add_argument("--reason", required=True, help="why, for the audit ledger and the version's tags")
    rollback.add_argument(
        "--expected-champion",
        default="",
        help="roll back only if this version is still champion (guards against undoing a newer promotion)",
    )
    rollback.set_defaults(func=cmd_rollback)
    prune = commands.add_parser(
        "prune-artifacts",
        help="delete old model artifact versions (fine-tuned, incremental, compressed), keeping the newest N and "
        "everything behind an MLflow alias",
    )
    prune.add_argument("--keep", type=int, default=3, help="newest versions kept per model artifact (default 3)")
    prune.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    prune.set_defaults(func=cmd_prune_artifacts)
    commands.add_parser("demo", help="prepare, then materialize the whole chain on the embedded default").set_defaults(
        func=cmd_demo
    )
    planner = commands.add_parser(
        "plan", help="memory and GPU tier for serving and training a model (reads config.json only)"
    )
    planner.add_argument("--model", required=True, help="7b | 13b | 70b | v3 | a checkpoint folder | a config.json")
    planner.add_argument("--context", type=int, default=4096, help="context length for the KV cache and activations")
    planner.add_argument("--batch", type=int, default=1, help="sequences per batch")
    planner.add_argument(
        "--gpus",
        type=int,
        default=8,
        help="GPUs for the per-GPU column (tensor parallel inference, FSDP2-sharded training)",
    )
    planner.add_argument("--lora-rank", type=int, default=16)
    planner.set_defaults(func=cmd_plan)
    tiny = commands.add_parser("tiny-model", help="write a tiny random causal LM with a real tokenizer (smoke tests)")
    tiny.add_argument("output")
    tiny.add_argument("--architecture", choices=("llama", "deepseek_v3"), default="llama")
    tiny.set_defaults(func=cmd_tiny_model)
    doctor = commands.add_parser(
        "doctor",
        help="check this machine against the configuration: versions, GPU vs plan, disk, MLflow, Dagster, offline "
        "resources",
    )
    doctor.add_argument(
        "--model",
        default="",
        help="preset, folder or config.json to plan for (default: $DEEPFEED_BASE_MODEL or the embedded SmolLM2)",
    )
    doctor.add_argument(
        "--scenario",
        default="lora-bf16-gc",
        help="planner scenario the GPUs must fit (see `deepfeed plan`), e.g. infer-bf16, full-mixed-gc",
    )
    doctor.add_argument(
        "--require-gpu", action="store_true", help="fail, rather than warn, when no CUDA GPU is visible"
    )
    doctor.add_argument(
        "--min-free-gib",
        type=float,
        default=None,
        help="free space the artifact root needs (default: 3 fp32 copies of the model)",
    )
    doctor.set_defaults(func=cmd_doctor)
    from deepfeed.serve.cli import add_serve_parser

    add_serve_parser(commands)
    from deepfeed.audit_cli import add_audit_parser

    add_audit_parser(commands)
    _add_ops_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
