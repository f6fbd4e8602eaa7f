"""The registry-backed pool of served models: champion, and challenger during an A/B test.

A version gets users only through an alias, and the challenger alias is honoured only for
a version whose tags record a passed evaluation gate and the challenger stage
(deepfeed.core.loop.lifecycle.may_serve_as_challenger): a hand-set or stale alias on an
unevaluated version sends no traffic to it (docs/model-lifecycle.md).

A refresh reads the aliases, loads any version not loaded yet, and only then replaces the
served mapping in one assignment. Requests already running keep the generator they
started with, so an alias move (promotion, rollback) never drops a request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from deepfeed.core.loop.lifecycle import may_serve_as_challenger
from deepfeed.core.loop.registry import CHALLENGER, CHAMPION, version_by_alias
from deepfeed.serve.engine import Generator, load_generator

log = logging.getLogger("deepfeed.serve")


@dataclass(frozen=True)
class ServedVersion:
    version: str
    source: str
    generator: Generator


class NoChampionError(RuntimeError):
    pass


class ModelPool:
    def __init__(
        self,
        tracking_uri: str,
        model_name: str = "deepfeed",
        runtime: str = "onnx_int8",
        ab_test: bool = True,
        loader: Callable[[str, str], Generator] = load_generator,
    ):
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.runtime = runtime
        self.ab_test = ab_test
        self._loader = loader
        self._served: dict[str, ServedVersion] = {}
        self._refresh_lock = threading.Lock()
        self.reloads = 0
        self.refused: set[str] = set()  # versions behind the challenger alias without a passed gate

    def _alias(self, client, alias: str):
        return version_by_alias(client, self.model_name, alias)

    def refresh(self) -> dict[str, str]:
        """Follow the registry's aliases; returns {arm: version} now served."""
        from mlflow import MlflowClient

        with self._refresh_lock:
            client = MlflowClient(tracking_uri=self.tracking_uri)
            wanted = {CHAMPION: self._alias(client, CHAMPION)}
            challenger = self._alias(client, CHALLENGER) if self.ab_test else None
            if challenger is not None and not may_serve_as_challenger(challenger.tags):
                if str(challenger.version) not in self.refused:
                    log.warning(
                        "not serving %s v%s as challenger: no passed evaluation gate recorded on it",
                        self.model_name,
                        challenger.version,
                    )
                self.refused.add(str(challenger.version))
                challenger = None
            if (
                challenger is not None
                and wanted[CHAMPION] is not None
                and str(challenger.version) != str(wanted[CHAMPION].version)
            ):
                wanted[CHALLENGER] = challenger
            loaded = {s.version: s for s in self._served.values()}
            served = {}
            for arm, mv in wanted.items():
                if mv is None:
                    continue
                version = str(mv.version)
                if version not in loaded:
                    log.info("loading %s v%s (%s) from %s", self.model_name, version, arm, mv.source)
                    loaded[version] = ServedVersion(version, mv.source, self._loader(mv.source, self.runtime))
                served[arm] = loaded[version]
            if {a: s.version for a, s in served.items()} != {a: s.version for a, s in self._served.items()}:
                self.reloads += 1
            self._served = served  # one assignment: readers see the old or the new mapping
            return self.versions()

    def versions(self) -> dict[str, str]:
        return {arm: s.version for arm, s in self._served.items()}

    def runtimes(self) -> dict[str, Any]:
        return {arm: s.generator.runtime for arm, s in self._served.items()}

    def pick(self, arm: str) -> tuple[str, ServedVersion]:
        """The arm actually served: the challenger only while one is loaded."""
        served = self._served
        if CHAMPION not in served:
            raise NoChampionError(f"no '{CHAMPION}' alias on registered model {self.model_name!r} yet")
        if arm == CHALLENGER and CHALLENGER in served:
            return CHALLENGER, served[CHALLENGER]
        return CHAMPION, served[CHAMPION]


class AliasWatcher:
    """Polls the registry so promotions and rollbacks reach the server on their own."""

    def __init__(self, pool: ModelPool, interval_s: float):
        self.pool, self.interval_s = pool, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alias-watcher", daemon=True)

    def start(self) -> None:
        if self.interval_s > 0:
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.pool.refresh()
            except Exception:  # a registry hiccup must not stop the watcher; the next poll retries
                log.exception("refreshing the served models failed; keeping the current ones")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
