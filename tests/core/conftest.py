"""Tiny Stable Diffusion models for core's tests, built once per session from the kept configs.

Each fixture is the path of a diffusers folder made by ``make_tiny_model`` (seed 0) that also
holds ``model.safetensors``, the same weights in the original single-file layout. Load it with
``core.models.load_base_model(path)`` (or ``path / "model.safetensors"``); loading gives each test
its own modules, so tests may move, cast or train them freely. The attention widths of each tiny
model are ``core.models.TINY_WIDTHS[arch]`` (text width first).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.models.tiny import make_tiny_model


def _tiny(factory: pytest.TempPathFactory, arch: str) -> Path:
    return make_tiny_model(factory.mktemp(f"tiny-{arch}"), arch=arch, single_file=True, seed=0)


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD1-structured model (epsilon; text width 48, UNet widths 32/64)."""
    return _tiny(tmp_path_factory, "sd1")


@pytest.fixture(scope="session")
def tiny_sd2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD2-structured model (v-prediction like SD 2.x 768-v; OpenCLIP layout in the single file)."""
    return _tiny(tmp_path_factory, "sd2")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SDXL-structured model: two text encoders (32 + 48 = 80 wide), text_time, attention at 64."""
    return _tiny(tmp_path_factory, "sdxl")
