"""The import contracts of ../shared/style.md hold, and they catch a violation."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH puts the copied packages first so grimp analyses *that* tree.
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


@pytest.fixture()
def tree_copy(tmp_path: Path) -> Path:
    """A copy of the three packages and pyproject.toml, safe to break."""
    for pkg in ("core", "api", "worker"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        ("core/errors.py", "import fastapi", "core is framework-free"),
        ("core/errors.py", "import api", "core is framework-free"),
        ("api/__init__.py", "import torch", "api never imports torch, diffusers or worker"),
        ("worker/__init__.py", "import api.routers", "worker imports no api routers"),
    ],
)
def test_contracts_catch_a_broken_import(
    tree_copy: Path, module: str, bad_import: str, contract: str
) -> None:
    """A deliberate forbidden import makes lint-imports fail and name the contract."""
    target = tree_copy / module
    target.write_text(target.read_text() + f"\n{bad_import}  # deliberate violation\n")
    if bad_import == "import api.routers" and not (tree_copy / "api" / "routers").exists():
        (tree_copy / "api" / "routers").mkdir()
        (tree_copy / "api" / "routers" / "__init__.py").write_text("")
    result = _lint_imports(tree_copy)
    assert result.returncode != 0, result.stdout
    assert f"{contract} BROKEN" in result.stdout


def test_contracts_are_kept_by_the_real_tree(tree_copy: Path) -> None:
    """The project as it stands keeps every contract."""
    result = _lint_imports(tree_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout
