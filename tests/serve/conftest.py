"""A registry with tiny models and an access policy, for the server tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from deepfeed.core.platform.access import hash_key

KEYS = {"annotator": "key-annotator", "operator": "key-operator", "viewer": "key-viewer", "client": "key-client"}
# The user-id salt every server test runs with (the server refuses to start without one).
SALT = "test-user-salt-0123456789abcdef"


def write_policy(path: Path, **extra) -> Path:
    path.write_text(
        json.dumps(
            {
                "roles": {
                    "annotator": {"permissions": ["feedback:submit"], "classifications": ["public", "internal"]},
                    "operator": {"permissions": ["feedback:submit", "model:reload"], "classifications": ["public"]},
                    "viewer": {"permissions": []},
                    "client": {"permissions": ["model:generate"]},
                },
                "keys": [{"sha256": hash_key(k), "principal": f"{role}-1", "role": role} for role, k in KEYS.items()],
                "classifications": {"public": ["*"], "internal": ["deepfeed"], "restricted": []},
                **extra,
            }
        )
    )
    return path


@pytest.fixture(autouse=True)
def user_salt(monkeypatch) -> str:
    """In the environment, so server subprocesses read it the way a deployment does."""
    monkeypatch.setenv("DEEPFEED_USER_SALT", SALT)
    monkeypatch.delenv("DEEPFEED_USER_SALT_FILE", raising=False)
    return SALT


class Registry:
    def __init__(self, home: Path, template: Path | None = None):
        from mlflow import MlflowClient

        db = home / "mlflow.db"
        if template is not None:
            shutil.copyfile(template, db)
        self.uri = f"sqlite:///{db}"
        self.client = MlflowClient(tracking_uri=self.uri)
        if template is None:
            self.client.create_registered_model("deepfeed")

    def register(self, checkpoint: Path, alias: str | None = None) -> str:
        """A version; with alias "challenger" it goes the way the pipeline's does (gate passed
        against the current champion, then granted), any other alias is set directly."""
        version = str(self.client.create_model_version("deepfeed", source=str(checkpoint)).version)
        if alias == "challenger":
            from deepfeed.core.loop.lifecycle import grant_challenger

            champion = self.client.get_model_version_by_alias("deepfeed", "champion").version
            grant_challenger(
                self.client, "deepfeed", version, "test-report", str(champion), "test: gate passed", "test"
            )
        elif alias:
            self.set_alias(alias, version)
        return version

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias("deepfeed", alias, version)

    def delete_alias(self, alias: str) -> None:
        self.client.delete_registered_model_alias("deepfeed", alias)


@pytest.fixture(scope="session")
def empty_registry_db(tmp_path_factory) -> Path:
    """Creating MLflow's schema takes seconds; every test starts from a copy of one."""
    home = tmp_path_factory.mktemp("registry")
    Registry(home)
    return home / "mlflow.db"


@pytest.fixture
def registry(deepfeed_env, empty_registry_db) -> Registry:
    return Registry(deepfeed_env, empty_registry_db)


@pytest.fixture
def policy_file(deepfeed_env) -> Path:
    return write_policy(deepfeed_env / "access_policy.json")
