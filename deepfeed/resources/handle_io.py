"""The IO manager of the asset graph: an asset's ArtifactHandle is stored as readable JSON,
and the asset page's `path` row is the artifact's folder, not Dagster's storage file.

Every deepfeed asset returns a small ArtifactHandle (where the artifact lives, its hash and
counts); the artifact itself is in the artifact store. Dagster's default filesystem IO
manager pickles the handle and reports the pickle file as `path`, which is not what an
operator looking for the model or the corpus wants. Any other output is stored as JSON
too (deepfeed's assets return handles only). Nothing is unpickled but the handles an older
deployment pickled (no .json file yet): a restricted unpickler accepts ArtifactHandle and
plain builtins, so a planted pickle in the storage folder cannot run code.
"""

from __future__ import annotations

import io
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
VALUE_KEY = "value"
HOME_KEY = "deepfeed_home"
_LEGACY_PICKLE_CLASSES = {
    ("deepfeed.core.platform.artifacts", "ArtifactHandle"): ArtifactHandle,
    # Where ArtifactHandle lived before core/ was grouped by stage.
    ("deepfeed.core.artifacts", "ArtifactHandle"): ArtifactHandle,
}


class _LegacyHandleUnpickler(pickle.Unpickler):
    """Unpickles what the default IO manager wrote for a handle, and refuses any other class."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _LEGACY_PICKLE_CLASSES:
            return _LEGACY_PICKLE_CLASSES[(module, name)]
        raise pickle.UnpicklingError(
            f"refusing to unpickle {module}.{name} from the asset storage: only an ArtifactHandle "
            "stored by an earlier deployment is read back this way"
        )


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
            try:
                text = json.dumps({VALUE_KEY: obj}, indent=2, sort_keys=True)
            except TypeError as exc:
                raise TypeError(
                    f"{context.asset_key.to_user_string()}: the IO manager stores ArtifactHandles and "
                    f"JSON values, not {type(obj).__name__}"
                ) from exc
            path.write_text(text + "\n")

    def load_from_path(self, context: dg.InputContext, path) -> Any:
        if not path.exists() and path.with_suffix("").exists():
            path = path.with_suffix("")  # materialized before this IO manager: a pickle without extension
        raw = path.read_bytes()
        if raw[:1] != b"{":
            return _LegacyHandleUnpickler(io.BytesIO(raw)).load()
        data = json.loads(raw)
        if HANDLE_KEY in data:
            known = {f.name for f in fields(ArtifactHandle)}
            handle = ArtifactHandle(**{k: v for k, v in data[HANDLE_KEY].items() if k in known})
            return _rebased(handle, data.get(HOME_KEY))
        return data[VALUE_KEY]

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
