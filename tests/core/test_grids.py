"""Grids: pixel geometry, labels that fit, and the A1111 ``parameters`` PNG text."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from core.errors import InvalidOptionError
from core.grids import (
    CELLS_KEY,
    Grid,
    checkpoint_grid,
    comparison_grid,
    format_parameters,
    grid_layout,
    grid_parameters,
    load_font,
    quote,
    save_png,
    wrap_label,
)


def _cells(rows: int, columns: int, size: int = 32) -> list[list[Image.Image]]:
    """Distinct solid-colour images with a marker pixel so a misplaced paste shows."""
    images = []
    for r in range(rows):
        row = []
        for c in range(columns):
            image = Image.new("RGB", (size, size), (40 * r + 20, 60 * c + 10, 200))
            image.putpixel((1, 2), (255, 0, 255))
            row.append(image)
        images.append(row)
    return images


@pytest.mark.parametrize(("rows", "columns"), [(1, 1), (2, 3), (3, 2)])
def test_checkpoint_grid_size_and_cells(rows: int, columns: int) -> None:
    images = _cells(rows, columns)
    prompts = [f"a prompt number {r}" for r in range(rows)]
    strengths = [0.5 * c for c in range(columns)]
    grid = checkpoint_grid(images, prompts, strengths, title="my-net step 500")
    layout = grid_layout(rows, columns, 32, 32, title="my-net step 500")
    assert grid.size == layout.size
    assert grid.size == (
        layout.label_width + columns * 32,
        layout.title_height + layout.header_height + rows * 32,
    )
    assert grid.mode == "RGB"
    for r in range(rows):
        for c in range(columns):
            cell = grid.crop(layout.cell_box(r, c))
            assert np.array_equal(np.asarray(cell), np.asarray(images[r][c]))


def test_each_extra_column_adds_one_cell_width_and_no_title_no_title_bar() -> None:
    one = comparison_grid(_cells(2, 1, 64), ["p", "q"], ["base model"])
    three = comparison_grid(_cells(2, 3, 64), ["p", "q"], ["base model", "step 5", "step 10"])
    assert three.width - one.width == 2 * 64
    assert three.height == one.height
    assert grid_layout(2, 3, 64, 64).title_height == 0
    titled = comparison_grid(_cells(2, 1, 64), ["p", "q"], ["base model"], title="t")
    assert titled.height > one.height


def test_labels_are_drawn_in_the_label_areas() -> None:
    layout = grid_layout(1, 2, 64, 64, title="title")
    grid = checkpoint_grid(_cells(1, 2, 64), ["a cat"], [0.0, 1.0], title="title")
    array = np.asarray(grid)
    # Dark text pixels in the title bar, the header and the row label column.
    assert (array[: layout.title_height] < 128).any()
    header = array[layout.title_height : layout.title_height + layout.header_height, layout.label_width :]
    assert (header < 128).any()
    assert (array[layout.title_height + layout.header_height :, : layout.label_width] < 128).any()


def test_long_labels_wrap_and_truncate_inside_their_box() -> None:
    font = load_font(14)
    text = "a very long prompt about " + "many things " * 30 + "supercalifragilisticexpialidocious" * 3
    lines = wrap_label(text, font, 120, 3)
    assert len(lines) == 3
    assert lines[-1].endswith("...")
    assert all(font.getlength(line) <= 120 for line in lines)
    assert wrap_label("short", font, 120, 3) == ["short"]
    # A single unbreakable word is split by characters instead of overflowing.
    split = wrap_label("x" * 200, font, 50, 100)
    assert len(split) > 1 and "".join(split) == "x" * 200


def test_long_prompt_grid_keeps_its_size() -> None:
    grid = checkpoint_grid(_cells(1, 2), ["word " * 200], [0.0, 1.0])
    assert grid.size == grid_layout(1, 2, 32, 32).size


def test_mismatched_images_are_refused() -> None:
    with pytest.raises(InvalidOptionError, match="expected 2 rows"):
        checkpoint_grid(_cells(1, 2), ["p", "q"], [0.0, 1.0])


def test_parameters_format_follows_a1111() -> None:
    text = format_parameters("a cat", "blurry", [("Steps", "20"), ("Sampler", "Euler a")])
    assert text == "a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a"
    assert format_parameters("a cat", "", [("Seed", "1")]) == "a cat\nSeed: 1"
    assert quote("plain") == "plain"
    assert quote("a, b") == '"a, b"'


def test_save_png_parameters_read_back(tmp_path) -> None:
    cells = [["a\nSteps: 2, Seed: 1", "a\nSteps: 2, Seed: 1, Hypernet: n, Hypernet strength: 1"]]
    parameters = grid_parameters(cells, ["a"], ["strength 0", "strength 1"])
    assert parameters.startswith(cells[0][0] + ", Grid rows: a, Grid columns: ")
    assert parameters.endswith('Grid columns: "strength 0, strength 1"')
    image = checkpoint_grid(_cells(1, 2), ["a"], [0.0, 1.0])
    path = Grid(image, parameters, tuple(tuple(row) for row in cells)).save(tmp_path / "sub" / "grid.png")
    with Image.open(path) as saved:
        assert saved.format == "PNG"
        assert saved.size == image.size
        assert saved.info["parameters"] == parameters
        assert json.loads(saved.info[CELLS_KEY]) == cells
    assert sorted(p.name for p in path.parent.iterdir()) == ["grid.png"]  # no partial file left


def test_save_png_non_latin1_text(tmp_path) -> None:
    text = "猫 — café\nSteps: 2"
    image = Image.new("RGB", (8, 8))
    ImageDraw.Draw(image).point((0, 0), fill=(255, 255, 255))
    save_png(image, tmp_path / "x.png", text)
    with Image.open(tmp_path / "x.png") as saved:
        assert saved.info["parameters"] == text
        assert CELLS_KEY not in saved.info
