"""docker-compose.yml and the Dockerfile cannot be run here (no Docker engine), so
this checks that everything they refer to exists in the project: commands,
modules, settings, copied paths and routes. It keeps them from silently rotting."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
OUR_IMAGE = "hyperforge:latest"


def _our_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in COMPOSE["services"].items() if s.get("image") == OUR_IMAGE or "build" in s}


def _subcommands() -> dict[str, Any]:
    parser = build_parser()
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        return dict(action.choices)
    return {}


def test_compose_has_the_services_the_issue_names() -> None:
    """postgres, redis, minio + bucket, migrate, api, worker and optional flower."""
    services = COMPOSE["services"]
    for name in ("postgres", "redis", "minio", "createbucket", "migrate", "api", "worker", "flower"):
        assert name in services, name
    assert "healthcheck" in services["postgres"]
    assert "--appendonly" in services["redis"]["command"] and "noeviction" in services["redis"]["command"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert services["flower"]["profiles"] == ["ops"]


@pytest.mark.parametrize("name", sorted(_our_services()))
def test_every_command_exists(name: str) -> None:
    """Each service's command is a real hyperforge subcommand or an importable Celery app."""
    command = _our_services()[name]["command"]
    if command[0] == "hyperforge":
        subcommands = _subcommands()
        assert command[1] in subcommands, f"{name}: hyperforge {command[1]} does not exist"
        # the options must parse exactly as written
        build_parser().parse_args(command[1:])
    elif command[0] == "celery":
        app_module = command[command.index("-A") + 1]
        assert importlib.util.find_spec(app_module) is not None, app_module
    else:
        pytest.fail(f"{name}: unexpected command {command[0]}")


def test_every_environment_variable_is_a_setting() -> None:
    """Each HYPERFORGE_* variable compose sets is a field of api.settings.Settings."""
    from api.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    known = {f"{prefix}{name}".upper() for name in Settings.model_fields}
    for name, service in _our_services().items():
        for var in service.get("environment", {}):
            if var.startswith("HYPERFORGE_"):
                assert var in known, f"{name}: {var} is not a setting (known: {sorted(known)})"


def test_dockerfile_copies_what_exists_and_runs_real_commands() -> None:
    """Every COPY source exists, and CMD is a hyperforge subcommand."""
    for line in DOCKERFILE.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    cmd = re.search(r"^CMD \[(.*)\]$", DOCKERFILE, re.M)
    assert cmd is not None
    parts = [p.strip().strip('"') for p in cmd.group(1).split(",")]
    assert parts[0] == "hyperforge" and parts[1] in _subcommands()
    assert "torch==${TORCH_VERSION}" in DOCKERFILE and "ARG TORCH_VERSION=2.13.0" in DOCKERFILE


def test_healthcheck_route_exists() -> None:
    """The API healthcheck probes a route the app really serves."""
    from api.app import create_app

    paths = create_app().openapi()["paths"]
    assert "/healthz" in paths
