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
