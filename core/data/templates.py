"""Prompt templates: one prompt per line with ``[filewords]`` and ``[name]``; torch-free.

The built-in sets live in ``core/templates/<name>.txt`` and are written in our own
words. ``none`` is the caption alone (``[filewords]``); ``hypernetwork`` wraps the
caption in a few neutral phrasings. A custom template is any text with one prompt
per line; blank lines are ignored.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

from core.data.captions import fill_template, prepare_caption
from core.errors import InvalidOptionError

BUILTIN_TEMPLATES: Final = (
    "style",
    "style_filewords",
    "subject",
    "subject_filewords",
    "hypernetwork",
    "none",
)
MAX_TEMPLATE_LINES: Final = 10_000
MAX_LINE_CHARS: Final = 1_000


@dataclass(frozen=True)
class PromptTemplate:
    """A named list of prompt lines; one is picked at random per sample."""

    name: str
    lines: tuple[str, ...]

    @property
    def uses_filewords(self) -> bool:
        """Whether any line includes the caption."""
        return any("[filewords]" in line for line in self.lines)

    def pick(self, rng: random.Random) -> str:
        """One line chosen with ``rng``."""
        return self.lines[rng.randrange(len(self.lines))]

    def render(
        self,
        caption: str,
        name: str,
        rng: random.Random,
        *,
        shuffle_tags: bool = False,
        tag_drop_out: float = 0.0,
    ) -> str:
        """The training prompt for one sample: a random line with the (shuffled/dropped) caption and name."""
        line = self.pick(rng)
        filewords = prepare_caption(caption, rng, shuffle=shuffle_tags, drop_out=tag_drop_out)
        return fill_template(line, filewords, name)


def template_from_text(text: str, name: str = "custom") -> PromptTemplate:
    """Parse template text (one prompt per line, blank lines ignored)."""
    lines = tuple(line.strip() for line in text.lstrip("\ufeff").splitlines() if line.strip())
    if not lines:
        raise InvalidOptionError("a template needs at least one non-empty line", option="template")
    if len(lines) > MAX_TEMPLATE_LINES:
        raise InvalidOptionError(f"at most {MAX_TEMPLATE_LINES} lines, got {len(lines)}", option="template")
    if any(len(line) > MAX_LINE_CHARS for line in lines):
        raise InvalidOptionError(f"a line is longer than {MAX_LINE_CHARS} characters", option="template")
    return PromptTemplate(name=name, lines=lines)


def builtin_template(name: str) -> PromptTemplate:
    """One of ``BUILTIN_TEMPLATES``."""
    if name not in BUILTIN_TEMPLATES:
        raise InvalidOptionError(
            f"unknown template {name!r}; built-in: {', '.join(BUILTIN_TEMPLATES)}", option="template"
        )
    text = resources.files("core").joinpath("templates", f"{name}.txt").read_text(encoding="utf-8")
    return template_from_text(text, name=name)


def template_from_file(path: str | Path) -> PromptTemplate:
    """Read a template file (UTF-8)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidOptionError(f"cannot read template file {p}: {exc}", option="template") from exc
    return template_from_text(text, name=p.stem)


def resolve_template(value: str) -> PromptTemplate:
    """A built-in name, or custom template text (recognised by a placeholder or a line break)."""
    if value in BUILTIN_TEMPLATES:
        return builtin_template(value)
    if "\n" in value or "[filewords]" in value or "[name]" in value:
        return template_from_text(value)
    raise InvalidOptionError(
        f"unknown template {value!r}: give a built-in name ({', '.join(BUILTIN_TEMPLATES)}) "
        "or template text with [filewords] or [name]",
        option="template",
    )
