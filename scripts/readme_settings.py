"""Regenerate the README's configuration table from ``api.settings.Settings``.

Usage: ``.venv/bin/python scripts/readme_settings.py`` (tests/test_readme.py checks the result).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydantic import SecretStr  # noqa: E402

from api.settings import Settings  # noqa: E402

START, END = "<!-- settings-table -->", "<!-- /settings-table -->"


def table() -> str:
    """The markdown table: variable, default, meaning."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, SecretStr):
            shown = "(development value)"
        elif default is None:
            shown = "unset"
        elif default == "":
            shown = "empty"
        else:
            shown = str(default)
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `HYPERFORGE_{name.upper()}` | `{shown}` | {meaning} |")
    return "\n".join(rows)


def main() -> None:
    """Rewrite the table between the markers in README.md."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table()}\n{END}{tail}")


if __name__ == "__main__":
    main()
