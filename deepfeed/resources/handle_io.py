"""The IO manager of the asset graph: an asset's ArtifactHandle is stored as readable JSON,
and the asset page's `path` row is the artifact's folder, not Dagster's storage file.

Every deepfeed asset returns a small ArtifactHandle (where the artifact lives, its hash and
counts); the artifact itself is in the artifact store. Dagster's default filesystem IO
manager pickles the handle and reports the pickle file as `path`, which is not what an
operator looking for the model or the corpus wants. Anything that is not a handle is
pickled as before; a handle pickled by an older deployment (no .json file yet) still loads.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import fields, replace
from typing import Any

import dagster as dg
from dagster._core.storage.fs_io_manager import PickledObjectFilesystemIOManager
from pydantic import Field

from deepfeed.core.platform.artifacts import ArtifactHandle
from deepfeed.core.platform.home import deepfeed_home

HANDLE_KEY = "artifact_handle"
HOME_KEY = "deepfeed_home"


def _rebased(handle: ArtifactHandle, stored_home: str | None) -> ArtifactHandle:
    """A handle stored before DEEPFEED_HOME moved names the artifact under the old home;
    it is read from the same place under the current one (docs/operations.md)."""
    home = str(deepfeed_home())
    if stored_home and stored_home != home and handle.uri.startswith(stored_home + "/"):
        return replace(handle, uri=home + handle.uri[len(stored_home) :])
    return handle


class ArtifactHandleFilesystemIOManager(PickledObjectFilesystemIOManager):
    extension = ".json"

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path) -> None:
        if isinstance(obj, ArtifactHandle):
            record = {HANDLE_KEY: obj.to_dict(), HOME_KEY: str(deepfeed_home())}
            path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        else:
            with path.open("wb") as file:
                pickle.dump(obj, file, pickle.HIGHEST_PROTOCOL)

    def load_from_path(self, context: dg.InputContext, path) -> Any:
        if not path.exists() and path.with_suffix("").exists():
            path = path.with_suffix("")  # materialized before this IO manager: a pickle without extension
        raw = path.read_bytes()
        if raw[:1] == b"{":
            data = json.loads(raw)
            if HANDLE_KEY in data:
                known = {f.name for f in fields(ArtifactHandle)}
                handle = ArtifactHandle(**{k: v for k, v in data[HANDLE_KEY].items() if k in known})
                return _rebased(handle, data.get(HOME_KEY))
        return pickle.loads(raw)

    def get_metadata(self, context: dg.OutputContext, obj: Any) -> dict[str, dg.MetadataValue]:
        if isinstance(obj, ArtifactHandle):
            return {"path": dg.MetadataValue.path(obj.uri)}
        return {}


class ArtifactHandleIOManager(dg.ConfigurableIOManagerFactory):
    """Stores asset outputs under Dagster's storage folder; handles as JSON (see module doc)."""

    base_dir: str | None = Field(
        default=None, description="Folder for the stored outputs (default: the Dagster instance's storage/)."
    )

    def create_io_manager(self, context: dg.InitResourceContext) -> ArtifactHandleFilesystemIOManager:
        return ArtifactHandleFilesystemIOManager(base_dir=self.base_dir or context.instance.storage_directory())
