"""A DEEPFEED_HOME that was moved or copied keeps working, and writes only to itself.

MLflow's SQL store keeps absolute locations: each experiment's artifact location, each
run's artifact URI and each registered version's `source` (the checkpoint folder in the
artifact store). After `mv ~/.deepfeed /data/deepfeed` they still point at the old
folder, so `models:/deepfeed@champion` would not load, and a new run's artifacts would be
written into the old path (recreating it). The home therefore records where it is in a
`.home.json` marker; when the marker names another folder, the embedded registry's
locations under that folder are rewritten to the same place under the current one, and
the marker is updated. A copy keeps its original intact. docs/operations.md describes it.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)

MARKER = ".home.json"
# (table, column) of MLflow's SQL store that can hold a path inside the home.
LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
)


def embedded_db(tracking_uri: str, home: Path) -> Path | None:
    """The sqlite file of an sqlite:/// tracking URI when it lies inside `home`, else None."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme != "sqlite":
        return None
    db = Path(parsed.path).resolve()
    home = home.resolve()
    return db if db.is_relative_to(home) else None


def _rewrite(db: Path, old: Path, new: Path) -> int:
    changed = 0
    with sqlite3.connect(db) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, column in LOCATION_COLUMNS:
            if table not in tables:
                continue
            for prefix_old, prefix_new in ((str(old), str(new)), (f"file://{old}", f"file://{new}")):
                cursor = connection.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608 (fixed names)
                    f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                    (prefix_new, len(prefix_old) + 1, prefix_old, len(prefix_old) + 1, prefix_old + "/"),
                )
                changed += cursor.rowcount
    return changed


def settle_home(home: Path, tracking_uri: str) -> int:
    """Make the embedded registry of `home` point into `home` (after a move or a copy) and
    record where the home is. Returns how many locations were rewritten. Does nothing for an
    MLflow server or a database outside the home, and never writes outside `home`."""
    home = home.resolve()
    if not home.is_dir():
        return 0
    marker = home / MARKER
    try:
        recorded = Path(json.loads(marker.read_text())["path"])
    except FileNotFoundError:
        recorded = None
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{marker} is not a deepfeed home marker ({exc}); delete it to re-create it") from exc
    changed = 0
    db = embedded_db(tracking_uri, home)
    if recorded is not None and recorded != home and db is not None and db.exists():
        changed = _rewrite(db, recorded, home)
        log.warning("DEEPFEED_HOME moved from %s to %s: %d registry locations now point here", recorded, home, changed)
    if recorded != home:
        staging = marker.with_name(f"{MARKER}.{os.getpid()}.tmp")
        staging.write_text(json.dumps({"path": str(home)}) + "\n")
        staging.replace(marker)
    return changed
