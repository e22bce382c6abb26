"""Read the docker compose files the way `docker compose config` does, without Docker.

Covers what covidscan's files use: YAML anchors and merge keys, ``${VAR}``,
``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}`` and ``$$``
interpolation, ``.env`` files, and the ``!reset`` / ``!override`` tags of
override files.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
CPU_OVERRIDE = ROOT / "docker-compose.cpu.yml"
ENV_EXAMPLE = ROOT / ".env.example"

# Variables compose sets in containers that third-party programs read, not covidscan.
THIRD_PARTY_VARIABLES = {
    "POSTGRES_USER": "the postgres image: the superuser it creates",
    "POSTGRES_PASSWORD": "the postgres image: that user's password",
    "POSTGRES_DB": "the postgres image: the database it creates",
    "FLOWER_PURGE_OFFLINE_WORKERS": "Flower: forget workers gone that many seconds",
    "CUDA_VISIBLE_DEVICES": "CUDA (TensorFlow): which GPUs a worker may use",
    "NVIDIA_VISIBLE_DEVICES": "the NVIDIA container runtime: which GPUs a container gets",
    "REDIS_PASSWORD": "the redis service: the password it requires",
    "CELERY_BROKER_URL": "Flower (Celery): the broker it watches",
    "API_UPSTREAM": "the nginx front (docker/nginx/entrypoint.sh): where the API listens",
    "LISTEN_PORT": "the nginx front: its port inside the container",
    "TLS_COMMON_NAME": "the nginx front: the name on its self-signed certificate",
    "GF_AUTH_ANONYMOUS_ENABLED": "Grafana: viewers need not sign in",
    "GF_AUTH_ANONYMOUS_ORG_ROLE": "Grafana: what anonymous viewers may do",
    "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH": "Grafana: the dashboard shown first",
    "GF_ANALYTICS_REPORTING_ENABLED": "Grafana: usage reports (off)",
    "GF_ANALYTICS_CHECK_FOR_UPDATES": "Grafana: update checks (off)",
    "GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES": "Grafana: plugin update checks (off)",
}

# Variables the docker compose command itself reads from .env.
COMPOSE_CLI_VARIABLES = {"COMPOSE_FILE", "COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES"}

_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})"
)


class Reset:
    """``!reset``: remove the attribute from the merged model."""


class Override:
    """``!override value``: replace the attribute instead of merging it."""

    def __init__(self, value: Any) -> None:
        self.value = value


class _Loader(yaml.SafeLoader):
    pass


def _override(loader: _Loader, node: yaml.Node) -> Override:
    if isinstance(node, yaml.SequenceNode):
        return Override(loader.construct_sequence(node, deep=True))
    if isinstance(node, yaml.MappingNode):
        return Override(loader.construct_mapping(node, deep=True))
    return Override(loader.construct_scalar(node))


_Loader.add_constructor("!reset", lambda loader, node: Reset())
_Loader.add_constructor("!override", _override)


def read_env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """``NAME=value`` lines of a compose ``.env`` file; comments and blank lines skipped."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def documented_names(path: Path = ENV_EXAMPLE) -> set[str]:
    """Names an env file sets or shows in a commented-out ``# NAME=value`` line."""
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", path.read_text(), re.MULTILINE))


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Substitute variables as compose does; ``${VAR:?message}`` raises ValueError when unset."""

    def substitute(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name, op, arg = match["name"], match["op"], match["arg"]
        value = env.get(name)
        missing = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-") and missing:
            return arg
        if op in (":?", "?") and missing:
            raise ValueError(f"{name}: {arg}")
        return value or ""

    return _INTERPOLATION.sub(substitute, text)


def referenced_variables(path: Path) -> set[str]:
    """Every variable a compose file interpolates (``$$`` escapes excluded)."""
    return {m["name"] for m in _INTERPOLATION.finditer(path.read_text()) if m["name"]}


def _walk(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return interpolate(value, env)
    if isinstance(value, dict):
        return {key: _walk(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [_walk(item, env) for item in value]
    if isinstance(value, Override):
        return Override(_walk(value.value, env))
    return value


def load(source: Path | str, env: Mapping[str, str]) -> dict[str, Any]:
    """A compose file (a path, or its text), parsed and interpolated with ``env``."""
    text = source.read_text() if isinstance(source, Path) else source
    return _walk(yaml.load(text, Loader=_Loader), env)


def merge(base: Any, override: Any) -> Any:
    """Apply an override file: mappings merge key by key, ``!reset`` removes, ``!override``
    and every other value replace (compose merges some lists; these files need none)."""
    if isinstance(override, Override):
        return override.value
    if not isinstance(override, dict):
        return override
    merged = dict(base) if isinstance(base, dict) else {}
    for key, value in override.items():
        if isinstance(value, Reset):
            merged.pop(key, None)
        else:
            merged[key] = merge(merged.get(key), value)
    return merged


def example_env() -> dict[str, str]:
    """.env.example with the required secrets filled in, as an operator would."""
    env = read_env_file()
    env["POSTGRES_PASSWORD"] = "s3cret"
    env["REDIS_PASSWORD"] = "r3dis"
    env["AWS_ACCESS_KEY_ID"] = "k3y"
    env["AWS_SECRET_ACCESS_KEY"] = "s3cr3tkey"
    return env


def compose_config(*overrides: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The merged, interpolated model of docker-compose.yml and any override files."""
    env = example_env() if env is None else env
    config = load(COMPOSE_FILE, env)
    for path in overrides:
        config = merge(config, load(path, env))
    return config


def healthcheck_shell(service: dict[str, Any]) -> list[str]:
    """A healthcheck's ``test`` as an argv to run (CMD-SHELL strings go through sh)."""
    kind, *rest = service["healthcheck"]["test"]
    if kind == "CMD-SHELL":
        return ["sh", "-c", rest[0]]
    if kind == "CMD":
        return rest
    raise ValueError(f"unexpected healthcheck form {kind!r}")


def local_argv(command: list[str]) -> list[str]:
    """A service's command with its console script taken from this virtualenv."""
    return [str(Path(sys.executable).parent / command[0]), *command[1:]]


def option(command: list[str], flag: str) -> str:
    """The value following ``flag`` in an argv."""
    return command[command.index(flag) + 1]


def replace_option(command: list[str], flag: str, value: str) -> list[str]:
    """A copy of ``command`` with the value after ``flag`` replaced."""
    index = command.index(flag) + 1
    return [*command[:index], value, *command[index + 1 :]]


def pins(path: Path = ROOT / "requirements.txt") -> dict[str, str]:
    """``{name: version}`` of a requirements file's ``name==version`` lines (extras dropped)."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            found[re.sub(r"\[.*\]", "", name).strip().lower()] = version.strip()
    return found
