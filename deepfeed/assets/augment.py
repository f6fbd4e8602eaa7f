"""augmented_corpus: the train split plus augmented children with provenance."""

from collections import Counter

import dagster as dg
from pydantic import Field

from deepfeed.assets.common import counts_table, handle_metadata
from deepfeed.core.artifacts import ArtifactHandle
from deepfeed.core.augmentation import AugmentationConfig, WordNetSynonyms, augment_records
from deepfeed.core.offline import activate_nltk_data
from deepfeed.core.tables import read_table, write_table
from deepfeed.resources import ArtifactStoreResource, MlflowResource

GROUP = "augment"


class AugmentedCorpusConfig(dg.Config):
    reorder_ratio: float = Field(default=0.5, description="Share of train records that get a sentence-reordered child (where order carries no meaning).")
    synonym_ratio: float = Field(default=0.5, description="Share of English train records that get a WordNet-synonym child.")
    synonym_rate: float = Field(default=0.15, description="Share of the eligible words replaced in a synonym child.")
    max_new_per_record: int = Field(default=2, description="Most augmented children per original record.")
    seed: int = Field(default=0, description="Seed of every random choice, for reproducible corpora.")


@dg.asset(group_name=GROUP, kinds={"parquet"})
def augmented_corpus(
    context: dg.AssetExecutionContext,
    config: AugmentedCorpusConfig,
    clean_corpus: ArtifactHandle,
    artifact_store: ArtifactStoreResource,
    mlflow: MlflowResource,
) -> dg.Output[ArtifactHandle]:
    """Train-split originals plus augmented records; eval records are never augmented (no leakage)."""
    store = artifact_store.store()
    records = read_table(store.local_path(clean_corpus) / "records.parquet")
    activate_nltk_data()
    result = augment_records(records, AugmentationConfig(**config.model_dump()), WordNetSynonyms())
    techniques = Counter(r["technique"] for r in result.records)
    counts = {"records": len(result.records), "originals": techniques.get("original", 0), "augmented": len(result.records) - techniques.get("original", 0)}
    with store.new_version("augmented_corpus", counts, run_id=context.run.run_id) as version:
        write_table(version.path / "records.parquet", result.records)
    handle = version.handle
    mlflow.log(context, params=config.model_dump(), metrics={f"augmented_{k}": v for k, v in techniques.items()})
    return dg.Output(
        handle,
        metadata={
            **handle_metadata(handle),
            "techniques": counts_table(dict(techniques), key="technique"),
            "not_augmented": counts_table(result.skipped),
        },
    )
