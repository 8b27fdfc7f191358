"""The README stays true: its two commands exist and every setting is documented."""

from __future__ import annotations

import re
from pathlib import Path

from api.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()


def test_quick_start_is_exactly_two_make_commands() -> None:
    """The quick start block holds `make run` and `make test`, and both targets exist."""
    block = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make run", "make test"]
    for target in ("run", "test"):
        assert re.search(rf"^{target}:", MAKEFILE, re.M), target


def test_ci_runs_the_readme_test_command() -> None:
    """`.ci/run` ends in the same `make test`."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)
    assert "HYPERFORGE_REQUIRE_SERVICES=1" in ci


def test_every_setting_is_in_the_readme_with_its_default() -> None:
    """Each HYPERFORGE_* setting appears in the configuration table."""
    for name in Settings.model_fields:
        assert f"`HYPERFORGE_{name.upper()}`" in README, f"HYPERFORGE_{name.upper()} missing from README"
