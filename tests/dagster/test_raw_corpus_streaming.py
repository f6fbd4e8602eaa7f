"""raw_corpus writes one file's records at a time, under fixed column types."""

import json

import dagster as dg
import pyarrow.parquet as pq
import pytest

from deepfeed.core.platform.artifacts import ArtifactStore
from deepfeed.core.platform.tables import TableWriter
from tests.dagster.test_chain import ingest


@pytest.fixture
def instance(deepfeed_env):
    with dg.instance_for_test(temp_dir=str(deepfeed_env / "dagster")) as instance:
        yield instance


def test_raw_corpus_holds_one_file_at_a_time_and_keeps_the_schema(
    deepfeed_env, tiny_llama, tmp_path, instance, monkeypatch
):
    source = tmp_path / "corpus" / "notes"
    source.mkdir(parents=True)
    for i in range(4):  # text-only files leave prompt/response all None in their part
        (source / f"text_{i}.jsonl").write_text(
            "\n".join(json.dumps({"text": f"Note {i}-{j} about the ward rota."}) for j in range(30)) + "\n"
        )
    (source / "pairs.jsonl").write_text(
        "\n".join(json.dumps({"prompt": f"Question {j}?", "response": f"Answer {j}."}) for j in range(30))
        + "\n{broken\n"
    )
    (source / "blob.txt").write_bytes(b"\x00\x01 binary")
    written = []
    original = TableWriter.write
    monkeypatch.setattr(
        TableWriter, "write", lambda self, rows: (written.append((self.path.name, len(rows))), original(self, rows))[1]
    )

    assert ingest(deepfeed_env, tiny_llama, tmp_path / "corpus", instance)["notes"].success
    assert max(n for name, n in written if name == "records.parquet") == 30  # never more than one file's records
    folder = ArtifactStore(deepfeed_env / "artifacts").local_path(
        ArtifactStore(deepfeed_env / "artifacts").latest("raw_corpus/notes")
    )
    records = pq.read_table(folder / "records.parquet")
    assert (
        records.num_rows == 150
        and str(records.schema.field("prompt").type) == "string"
        and str(records.schema.field("tags").type.value_type) == "string"
    )
    quarantine = pq.read_table(folder / "quarantine.parquet").to_pylist()
    assert sorted((q["source"], q["locator"]) for q in quarantine) == [
        ("notes/blob.txt", "file"),
        ("notes/pairs.jsonl", "line 31"),
    ]
    manifest = json.loads((folder / "manifest.json").read_text())["counts"]
    assert manifest["read"] == manifest["kept"] + manifest["quarantined"] == 152 and manifest["files"] == 6
