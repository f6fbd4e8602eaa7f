"""deploy/helm/values.yaml checked statically: no Kubernetes cluster exists here.

The JSON schema (deploy/helm/values.schema.json) closes every object deepfeed sets
against typos and wrong types; the tests below add what a schema cannot say: the values
agree with deploy/dagster.yaml and point at files that exist in the image.
"""

import copy
import json
from pathlib import Path

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed (pip install jsonschema==4.26.0)")

REPO = Path(__file__).resolve().parents[2]
HELM = REPO / "deploy" / "helm"


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load((HELM / "values.yaml").read_text())


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((HELM / "values.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(validator, values) -> list[str]:
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(values)]


def test_values_match_the_schema(values, validator):
    assert _errors(validator, values) == []


@pytest.mark.parametrize(
    "path, bad",
    [
        (("dagster-user-deployments", "deployments", 0, "image", "pullPolicy"), "Sometimes"),
        (("dagster-user-deployments", "deployments", 0, "port"), "3030"),
        (("dagster-user-deployments", "deployments", 0, "nodeSelektor"), {}),  # a typo'd key
        (
            ("dagsterDaemon", "runCoordinator", "config", "queuedRunCoordinator", "tagConcurrencyLimits", 0, "limit"),
            "one",
        ),
        (("runLauncher", "type"), "K8sLauncher"),
    ],
)
def test_the_schema_rejects_typos_and_wrong_types(values, validator, path, bad):
    broken = copy.deepcopy(values)
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = bad
    assert _errors(validator, broken)


def test_values_agree_with_the_production_instance(values):
    instance = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    queue = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert queue["tagConcurrencyLimits"] == instance["run_coordinator"]["config"]["tag_concurrency_limits"]
    retries = values["dagsterDaemon"]["runRetries"]
    assert (retries["enabled"], retries["maxRetries"], retries["retryOnAssetOrOpFailure"]) == (
        instance["run_retries"]["enabled"],
        instance["run_retries"]["max_retries"],
        instance["run_retries"]["retry_on_asset_or_op_failure"],
    )
    assert values["postgresql"]["postgresqlScheme"] == instance["storage"]["postgres"]["postgres_db"]["scheme"]
    assert values["runLauncher"]["type"] == instance["run_launcher"]["class"]


def test_code_location_runs_the_production_definitions_on_the_k8s_executor(values):
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    args = deployment["dagsterApiGrpcArgs"]
    in_image = Path(args[args.index("--python-file") + 1])
    workdir = Path(args[args.index("--working-directory") + 1])
    # The Dockerfiles copy the repository to /opt/deepfeed.
    assert (REPO / in_image.relative_to(workdir)).is_file()
    env = {e["name"]: e.get("value") for e in deployment["env"]}
    assert env["DEEPFEED_EXECUTOR"] == "k8s"
    assert env["MLFLOW_TRACKING_URI"].startswith("http")
    # The server's registry refuses local checkpoint paths: the artifact root must be shared.
    assert "://" in env["DEEPFEED_ARTIFACT_ROOT"] and not env["DEEPFEED_ARTIFACT_ROOT"].startswith("file:")
    assert env["HF_HUB_OFFLINE"] == "1"
    assert "nvidia.com/gpu" not in json.dumps(deployment["resources"])  # the code server needs no GPU
