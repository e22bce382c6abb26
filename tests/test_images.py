"""The two images: pinned bases and packages, a non-root user, and all the code needs.

No Docker engine runs here, so the Dockerfiles are read as text, and each image's
requirements file is checked against what the code it copies imports.
"""

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests import compose
from tests.conftest import ROOT

DOCKERFILES = {
    "api": ROOT / "docker" / "api.Dockerfile",
    "worker": ROOT / "docker" / "worker.Dockerfile",
}
REQUIREMENTS = {
    "api": ROOT / "requirements-api.txt",
    "worker": ROOT / "requirements-worker.txt",
}
# Copied with their packages but never run in that image: the local stack (both), and the
# CLI, its HTTP client and the C-STORE receiver (the worker).
NOT_RUN = {
    "api": {"devtools/devstack.py", "devtools/embedded_redis.py"},
    "worker": {
        "devtools/devstack.py",
        "devtools/embedded_redis.py",
        "cli/main.py",
        "cli/client.py",
        "dicomnet/listener.py",
    },
}
PROJECT_PACKAGES = {
    "api",
    "cli",
    "core",
    "covidscan",
    "db",
    "devtools",
    "dicomnet",
    "models",
    "tests",
    "worker",
}
# Needed though the code never imports them by name: the programs the services run
# (docker-compose.yml) and the PostgreSQL driver SQLAlchemy loads for DATABASE_URL.
ALSO_NEEDED = {"api": {"gunicorn", "psycopg"}, "worker": {"celery", "psycopg"}}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def arg_defaults(dockerfile: Path) -> dict[str, str]:
    return dict(
        args.split("=", 1)
        for kind, args in instructions(dockerfile)
        if kind == "ARG" and "=" in args
    )


def base_image(dockerfile: Path) -> str:
    (image,) = [args.split()[0] for kind, args in instructions(dockerfile) if kind == "FROM"]
    return re.sub(r"\$\{(\w+)\}", lambda m: arg_defaults(dockerfile)[m[1]], image)


def copied_paths(dockerfile: Path) -> list[str]:
    paths = []
    for kind, args in instructions(dockerfile):
        if kind == "COPY":
            assert not args.startswith("--from"), "single-stage images expected"
            paths.extend(args.split()[:-1])
    return paths


def imported_distributions(image: str) -> set[str]:
    """Distributions that the code copied into ``image`` imports (project and stdlib left out)."""
    modules = set()
    for copied in copied_paths(DOCKERFILES[image]):
        for path in [ROOT / copied] if copied.endswith(".py") else (ROOT / copied).rglob("*.py"):
            if path.relative_to(ROOT).as_posix() in NOT_RUN[image]:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    modules.add(node.module.split(".")[0])
    modules -= PROJECT_PACKAGES | set(sys.stdlib_module_names) | {"__future__"}
    providers = importlib.metadata.packages_distributions()
    return {canonicalize_name(providers[module][0]) for module in modules}


def installed_with(requirement_lines: list[str]) -> set[str]:
    """Every distribution that installing these requirements brings in (from this virtualenv)."""
    pending = [Requirement(line) for line in requirement_lines]
    found: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        found.add(name)
        for text in importlib.metadata.requires(name) or []:
            dependency = Requirement(text)
            extras = requirement.extras or {""}
            if dependency.marker is None or any(
                dependency.marker.evaluate({"extra": extra}) for extra in extras
            ):
                pending.append(dependency)
    return found


def requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def test_base_images_are_pinned_and_the_worker_is_on_tensorflows_gpu_image():
    tensorflow = compose.pins()["tensorflow"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base_image(DOCKERFILES["api"]))
    assert base_image(DOCKERFILES["worker"]) == f"tensorflow/tensorflow:{tensorflow}-gpu"
    assert arg_defaults(DOCKERFILES["worker"])["TENSORFLOW_VERSION"] == tensorflow


@pytest.mark.parametrize("image", DOCKERFILES)
def test_the_image_runs_as_the_shared_non_root_user(image):
    steps = instructions(DOCKERFILES[image])
    users = [args for kind, args in steps if kind == "USER"]
    assert users and users[-1] == "covidscan"
    assert any("--uid 10001" in args for kind, args in steps if kind == "RUN")


@pytest.mark.parametrize("image", DOCKERFILES)
def test_the_image_copies_files_that_exist_and_reach_the_build_context(image):
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip()
    }
    for path in copied_paths(DOCKERFILES[image]):
        assert (ROOT / path).exists(), path
        assert path.split("/")[0] not in ignored, f"{path} is excluded by .dockerignore"


def test_the_build_context_leaves_out_secrets_and_local_state():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".venv", "var/", ".git", "tests/"} <= set(ignored)


@pytest.mark.parametrize("image", REQUIREMENTS)
def test_image_requirements_are_pinned_as_in_requirements_txt(image):
    everything = compose.pins()
    lines = requirement_lines(REQUIREMENTS[image])
    assert all("==" in line for line in lines)
    assert {
        name: everything.get(name) for name in compose.pins(REQUIREMENTS[image])
    } == compose.pins(REQUIREMENTS[image])


def test_the_api_image_has_no_tensorflow():
    installed = installed_with(requirement_lines(REQUIREMENTS["api"]))
    assert not {"tensorflow", "tf-keras", "keras", "opencv-python-headless"} & installed


@pytest.mark.parametrize("image", REQUIREMENTS)
def test_the_image_provides_every_package_its_code_and_commands_import(image):
    lines = requirement_lines(REQUIREMENTS[image])
    if image == "worker":  # the base image brings TensorFlow at the pinned version
        lines.append(f"tensorflow=={compose.pins()['tensorflow']}")
    installed = installed_with(lines)
    needed = imported_distributions(image) | ALSO_NEEDED[image]
    assert not needed - installed, f"{image} image lacks {needed - installed}"
