"""Record tables on disk: Parquet files read and written through pyarrow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def write_table(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...] | None = None) -> int:
    """Write rows (an empty list still yields a readable file with the given columns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if rows:
        table = pa.Table.from_pylist(rows)
    else:
        table = pa.table({name: pa.array([], type=pa.string()) for name in (columns or ())})
    pq.write_table(table, path, compression="zstd")
    return table.num_rows


def read_table(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"record table {path} is missing")
    return pq.read_table(path).to_pylist()


class TableWriter:
    """Rows appended to one Parquet file as they come, under a fixed schema (a part whose
    column is all None must not decide that column's type for the whole file)."""

    def __init__(self, path: Path, schema: pa.Schema):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.schema, self.rows = path, schema, 0
        self._writer = pq.ParquetWriter(path, schema, compression="zstd")

    def write(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self._writer.write_table(pa.Table.from_pylist(rows, schema=self.schema))
            self.rows += len(rows)

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> "TableWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
