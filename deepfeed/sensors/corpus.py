"""corpus_source_sensor: new or changed sources under the corpus root -> a raw_corpus
partition each (registered when new) and one ingest run per source that changed."""

from pathlib import Path
from typing import Optional

import dagster as dg

from deepfeed.core.data.ingest import CorpusSourceError, sources_to_ingest
from deepfeed.core.platform.audit import AuditLedger
from deepfeed.pipelines.partitions import corpus_root, corpus_sources, latest_raw_versions
from deepfeed.resources import ArtifactStoreResource
from deepfeed.settings import default_corpus_path

INGEST_JOB = "corpus_ingest_job"


def ingest_run_config(corpus_path: str) -> dict:
    return {"ops": {"raw_corpus": {"config": {"corpus_path": corpus_path}}}}


def plan_source_runs(instance: dg.DagsterInstance, store, corpus_path: str) -> tuple[list[str], dict[str, str]]:
    """(sources to register, source -> fingerprint of those to ingest). The fingerprints
    ingested last are read from the artifacts, so a lost cursor cannot skip or repeat data."""
    registered = set(instance.get_dynamic_partitions(corpus_sources.name))
    current = sources_to_ingest(corpus_root(corpus_path), {})  # every source, with its fingerprint
    latest = latest_raw_versions(store, [s for s in current if s in registered])
    ingested = {s: (h.counts.get("fingerprint") if h else None) for s, h in latest.items()}
    stale = {s: fp for s, fp in current.items() if ingested.get(s) != fp}
    return sorted(set(current) - registered), stale


def missing_sources(instance: dg.DagsterInstance, corpus_path: str) -> list[str]:
    """Registered sources whose folder is gone from the corpus root. They are still
    cleaned and trained on (their last raw_corpus version) until retired: a folder that
    vanishes by accident must not silently drop data, nor a withdrawal silently keep it."""
    registered = instance.get_dynamic_partitions(corpus_sources.name)
    present = set(sources_to_ingest(corpus_root(corpus_path), {}))
    return sorted(s for s in registered if s not in present)


def retire_source(
    instance: dg.DagsterInstance, store, source: str, reason: str, ledger: AuditLedger, purge_raw: bool = False
) -> str:
    """Stop cleaning and training on a source: its raw_corpus partition is removed, so the
    next clean_corpus no longer reads it, and `ledger` records who asked and why. Its
    raw_corpus versions (scrubbed text) stay on disk (earlier clean_corpus versions name
    them; deleting data that already reached a model is a separate, deliberate act).
    `purge_raw`: also delete the source's raw bytes from the guarded raw store (the only
    unscrubbed copy; docs/privacy.md). Returns the path of its last raw version, or '' if
    it was never ingested."""
    from deepfeed.core.data.raw_store import RawStore
    from deepfeed.core.platform.audit import AuditEntry
    from deepfeed.pipelines.partitions import raw_artifact_name

    registered = instance.get_dynamic_partitions(corpus_sources.name)
    if source not in registered:
        raise ValueError(
            f"{source!r} is not a registered corpus source; registered: {', '.join(sorted(registered)) or 'none'}"
        )
    if not reason.strip():
        raise ValueError("a reason is required: it goes into the audit ledger")
    latest = store.latest(raw_artifact_name(source))
    instance.delete_dynamic_partition(corpus_sources.name, source)
    extra = {"last_version": latest.version if latest else None}
    if purge_raw:
        # The store the source was ingested with (recorded in its version), else the configured one.
        where = latest.counts.get("raw_store") if latest else None
        raw_store = RawStore(Path(where).parent) if where else RawStore.from_env()
        extra["raw_store_files_purged"] = raw_store.purge(source)
    ledger.append(
        [
            AuditEntry(
                record_id=source,
                stage="raw_corpus",
                action="retired",
                reason=reason.strip(),
                run_id="deepfeed retire-source",
                extra=extra,
            )
        ]
    )
    return str(store.local_path(latest)) if latest else ""


def build_corpus_source_sensor(corpus_path: Optional[str] = None, interval_s: int = 300) -> dg.SensorDefinition:
    @dg.sensor(
        name="corpus_source_sensor",
        job_name=INGEST_JOB,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Sources under the corpus root that are new or changed -> partition of {corpus_sources.name} + "
        f"{INGEST_JOB} run.",
    )
    def corpus_source_sensor(context: dg.SensorEvaluationContext, artifact_store: ArtifactStoreResource):
        path = default_corpus_path() if corpus_path is None else corpus_path
        try:
            new, stale = plan_source_runs(context.instance, artifact_store.store(), path)
        except CorpusSourceError as exc:
            return dg.SkipReason(f"corpus root unreadable: {exc}")
        gone = missing_sources(context.instance, path)
        if gone:
            context.log.warning(
                "registered source(s) %s are gone from %s; their last version is still cleaned and trained on "
                "until `deepfeed retire-source NAME --reason ...`",
                gone,
                corpus_root(path),
            )
        if not stale:
            note = (
                f"; registered but gone (still trained on, retire with `deepfeed retire-source`): {', '.join(gone)}"
                if gone
                else ""
            )
            return dg.SkipReason(f"no new or changed source under {str(corpus_root(path))!r}{note}")
        context.log.info("registering %s; ingesting %s", new, sorted(stale))
        return dg.SensorResult(
            # The run key carries the fingerprint: a source whose files did not change is never re-run.
            run_requests=[
                dg.RunRequest(
                    run_key=f"{source}@{fp}",
                    partition_key=source,
                    run_config=ingest_run_config(path),
                    tags={"deepfeed/corpus_source": source},
                )
                for source, fp in stale.items()
            ],
            dynamic_partitions_requests=[corpus_sources.build_add_request(new)] if new else [],
        )

    return corpus_source_sensor


corpus_source_sensor = build_corpus_source_sensor()
