"""Labelled PNG grids of sample images, and A1111's ``parameters`` PNG text.

A grid has an optional title bar, a header row with one label per column, a left column with
one label per row (the prompt), and the images edge to edge; ``GridLayout`` gives every size,
so callers and tests can find each cell. Labels are wrapped to their box and truncated with
"..." when they do not fit. Fonts: DejaVu Sans when the system has it, else Pillow's
built-in scalable font.

PNG text: ``parameters`` holds A1111's infotext (prompt, ``Negative prompt: ...``, then one
settings line) so A1111's PNG Info tab reads it. For a grid it is the top-left cell's text
plus ``Grid rows`` / ``Grid columns`` keys on the settings line (as A1111's own X/Y plots
store their first image's text); every cell's full text is kept as JSON (a list of rows, each a
list of strings) in a second chunk, ``hyperforge_cells``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Final

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from core.errors import InvalidOptionError

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
BACKGROUND: Final = (255, 255, 255)
INK: Final = (0, 0, 0)
CELLS_KEY: Final = "hyperforge_cells"
HEADER_LINES: Final = 2  # column labels get two lines, the title one


@lru_cache(maxsize=16)
def load_font(size: int) -> Font:
    """DejaVu Sans at ``size`` pixels, or Pillow's built-in font when DejaVu is not installed."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def _text_width(font: Font, text: str) -> float:
    return float(font.getlength(text))


def wrap_label(text: str, font: Font, max_width: int, max_lines: int) -> list[str]:
    """Greedy word wrap of ``text`` into at most ``max_lines`` lines; the last is cut with "..."."""
    words = text.split()
    lines: list[str] = []
    current = ""
    for word in words:
        candidate = f"{current} {word}" if current else word
        if _text_width(font, candidate) <= max_width:
            current = candidate
            continue
        if current:
            lines.append(current)
        # A word wider than the box is broken by characters.
        while _text_width(font, word) > max_width and len(word) > 1:
            cut = len(word) - 1
            while cut > 1 and _text_width(font, word[:cut]) > max_width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    if len(lines) <= max_lines:
        return lines
    kept = lines[:max_lines]
    last = kept[-1]
    while last and _text_width(font, last + "...") > max_width:
        last = last[:-1]
    kept[-1] = last.rstrip() + "..."
    return kept


@dataclass(frozen=True)
class GridLayout:
    """Pixel geometry of a grid: label column, title and header heights, cell size."""

    rows: int
    columns: int
    cell_width: int
    cell_height: int
    font_size: int
    label_width: int
    title_height: int
    header_height: int

    @property
    def line_height(self) -> int:
        """Height of one line of label text."""
        return round(self.font_size * 1.25)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole grid image."""
        return (
            self.label_width + self.columns * self.cell_width,
            self.title_height + self.header_height + self.rows * self.cell_height,
        )

    def cell_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of cell ``row``, ``column``."""
        left = self.label_width + column * self.cell_width
        top = self.title_height + self.header_height + row * self.cell_height
        return left, top, left + self.cell_width, top + self.cell_height


def grid_layout(rows: int, columns: int, cell_width: int, cell_height: int, title: str = "") -> GridLayout:
    """The layout of a ``rows`` x ``columns`` grid of cells of the given size."""
    if rows < 1 or columns < 1:
        raise InvalidOptionError(f"grid: needs at least one row and one column, got {rows}x{columns}")
    # About A1111's label size: readable at 512 px cells, never below 12 px.
    font_size = max(12, (cell_width + cell_height) // 40)
    line = round(font_size * 1.25)
    pad = font_size // 2
    return GridLayout(
        rows=rows,
        columns=columns,
        cell_width=cell_width,
        cell_height=cell_height,
        font_size=font_size,
        label_width=max(cell_width, 10 * font_size),
        title_height=line + 2 * pad if title else 0,
        header_height=HEADER_LINES * line + 2 * pad,
    )


def _draw_label(
    draw: ImageDraw.ImageDraw, text: str, box: tuple[int, int, int, int], font: Font, line: int
) -> None:
    """Draw ``text`` wrapped and centred in ``box``."""
    left, top, right, bottom = box
    pad = max(2, line // 5)
    width = right - left - 2 * pad
    max_lines = max(1, (bottom - top - 2 * pad) // line)
    lines = wrap_label(text, font, width, max_lines)
    y = top + (bottom - top - line * len(lines)) // 2
    for text_line in lines:
        x = left + (right - left - _text_width(font, text_line)) / 2
        draw.text((x, y), text_line, font=font, fill=INK)
        y += line


def _check_images(images: Sequence[Sequence[Image.Image]], rows: int, columns: int) -> tuple[int, int]:
    if len(images) != rows or any(len(row) != columns for row in images):
        raise InvalidOptionError(
            f"grid: expected {rows} rows of {columns} images, got {[len(row) for row in images]}",
            option="images",
        )
    return max(im.width for row in images for im in row), max(im.height for row in images for im in row)


def labelled_grid(
    images: Sequence[Sequence[Image.Image]],
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    title: str = "",
) -> Image.Image:
    """An RGB grid: ``images[row][column]`` with row labels on the left and column labels on top."""
    cell_w, cell_h = _check_images(images, len(row_labels), len(column_labels))
    layout = grid_layout(len(row_labels), len(column_labels), cell_w, cell_h, title)
    grid = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(grid)
    font = load_font(layout.font_size)
    line = layout.line_height
    if title:
        _draw_label(draw, title, (0, 0, layout.size[0], layout.title_height), font, line)
    top = layout.title_height
    for c, label in enumerate(column_labels):
        left = layout.label_width + c * cell_w
        _draw_label(draw, label, (left, top, left + cell_w, top + layout.header_height), font, line)
    for r, label in enumerate(row_labels):
        left, cell_top, _, bottom = layout.cell_box(r, 0)
        _draw_label(draw, label, (0, cell_top, layout.label_width, bottom), font, line)
        for c, image in enumerate(images[r]):
            left, cell_top, _, _ = layout.cell_box(r, c)
            # Smaller images sit centred in their cell.
            offset = ((cell_w - image.width) // 2, (cell_h - image.height) // 2)
            grid.paste(image.convert("RGB"), (left + offset[0], cell_top + offset[1]))
    return grid


def strength_label(strength: float) -> str:
    """Column label of a strength column."""
    return f"strength {strength:g}"


def checkpoint_grid(
    images: Sequence[Sequence[Image.Image]],
    prompts: Sequence[str],
    strengths: Sequence[float],
    title: str = "",
) -> Image.Image:
    """One checkpoint's grid: ``images[prompt_index][strength_index]``; rows prompts, columns strengths."""
    return labelled_grid(images, prompts, [strength_label(s) for s in strengths], title)


def comparison_grid(
    images: Sequence[Sequence[Image.Image]],
    prompts: Sequence[str],
    column_labels: Sequence[str],
    title: str = "",
) -> Image.Image:
    """Across checkpoints: ``images[prompt_index][column_index]``, columns the base model then each step."""
    return labelled_grid(images, prompts, column_labels, title)


def quote(text: str) -> str:
    """Quote an infotext value as A1111 does when it holds a comma, colon or newline."""
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def format_parameters(prompt: str, negative_prompt: str, fields: Sequence[tuple[str, str]]) -> str:
    """A1111 infotext: the prompt, ``Negative prompt: ...`` when set, then ``Key: value, ...``."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{key}: {value}" for key, value in fields))
    return "\n".join(lines)


def grid_parameters(
    cells: Sequence[Sequence[str]], row_labels: Sequence[str], column_labels: Sequence[str]
) -> str:
    """A grid's ``parameters``: the top-left cell's infotext plus ``Grid rows`` and ``Grid columns``."""
    extra = f", Grid rows: {quote(', '.join(row_labels))}, Grid columns: {quote(', '.join(column_labels))}"
    return cells[0][0] + extra


@dataclass(frozen=True, eq=False)
class Grid:
    """A rendered grid with its A1111 ``parameters`` text and each cell's own infotext."""

    image: Image.Image
    parameters: str
    cells: tuple[tuple[str, ...], ...] = field(default=())

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the grid as PNG with its text chunks; see ``save_png``."""
        return save_png(self.image, path, self.parameters, self.cells or None)


def save_png(
    image: Image.Image,
    path: str | os.PathLike[str],
    parameters: str,
    cells: Sequence[Sequence[str]] | None = None,
) -> Path:
    """Write ``image`` as PNG with ``parameters`` (and ``hyperforge_cells`` JSON) text; atomic."""
    target = Path(path)
    info = PngInfo()
    info.add_text("parameters", parameters)
    if cells is not None:
        info.add_text(CELLS_KEY, json.dumps([list(row) for row in cells], ensure_ascii=False), zip=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    try:
        image.save(partial, format="PNG", pnginfo=info)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target
