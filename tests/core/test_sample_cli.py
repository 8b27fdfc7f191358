"""``hyperforge sample`` through core.cli.main: a grid is written, bad options write nothing."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from core.cli import main
from core.commands.sample_cmds import parse_hypernetwork, parse_strengths
from core.errors import InvalidOptionError
from core.grids import CELLS_KEY, grid_layout
from core.hypernetwork.fileformat import save_pt
from core.hypernetwork.module import Hypernetwork
from core.hypernetwork.options import HypernetworkOptions
from core.models import TINY_WIDTHS

FAST = ["--steps", "2", "--width", "32", "--height", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def net_file(tmp_path_factory) -> str:
    options = HypernetworkOptions.create(enable_sizes=TINY_WIDTHS["sd1"])
    hn = Hypernetwork.new("clinet", options, seed=0)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in hn.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    path = tmp_path_factory.mktemp("nets") / "clinet.pt"
    save_pt(hn, path)
    return str(path)


def test_sample_writes_a_labelled_grid(tiny_sd1, net_file, tmp_path, capsys) -> None:
    out = tmp_path / "grid.png"
    argv = ["sample", "--model", str(tiny_sd1), "--hypernetwork", f"{net_file}:0.8"]
    argv += ["--prompt", "a red cube", "--prompt", "a blue ball", "--strengths", "0,1", "--seed", "4"]
    argv += ["--sampler", "dpm++_2m", "--negative-prompt", "blurry", "--out", str(out), *FAST]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as grid:
        assert grid.size == grid_layout(2, 2, 32, 32).size
        parameters = grid.info["parameters"]
        assert grid.info[CELLS_KEY]
    assert parameters.startswith("a red cube\nNegative prompt: blurry\nSteps: 2, Sampler: DPM++ 2M, ")
    assert "Seed: 4, Size: 32x32" in parameters
    assert 'Grid columns: "strength 0, strength 1"' in parameters
    # Existing output is kept unless --overwrite is given.
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "option"),
    [
        (["--sampler", "plms"], "--sampler"),
        (["--width", "36"], "--width"),
        (["--height", "abc"], "--height"),
        (["--strengths", "0,half,1"], "--strengths"),
        (["--strengths", "0,-1"], "--strengths"),
        (["--cfg-scale", "nan"], "--cfg-scale"),
        (["--steps", "0"], "--steps"),
        (["--hypernetwork", "missing.pt"], "--hypernetwork"),
        (["--hypernetwork", "NET:strong"], "--hypernetwork"),
    ],
)
def test_bad_options_are_refused_without_a_file(
    tiny_sd1, net_file, tmp_path, capsys, extra: list[str], option: str
) -> None:
    out = tmp_path / "grid.png"
    extra = [value.replace("NET", net_file) for value in extra]
    if "--hypernetwork" not in extra:
        extra = ["--hypernetwork", net_file, *extra]
    argv = ["sample", "--model", str(tiny_sd1), "--prompt", "p", "--out", str(out), *FAST, *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert option in err
    if option == "--sampler":
        assert "euler_a" in err and "dpm++_2m_karras" in err
    assert list(tmp_path.iterdir()) == []


def test_strengths_need_a_hypernetwork(tiny_sd1, tmp_path, capsys) -> None:
    argv = ["sample", "--model", str(tiny_sd1), "--prompt", "p", "--strengths", "0,1"]
    assert main([*argv, "--out", str(tmp_path / "g.png"), *FAST]) == 2
    assert "--strengths" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_parse_helpers(net_file) -> None:
    assert parse_strengths("0, 0.5,1") == [0.0, 0.5, 1.0]
    assert parse_hypernetwork(net_file).strength == 1.0
    assert parse_hypernetwork(f"{net_file}:0.25").strength == 0.25
    with pytest.raises(InvalidOptionError):
        parse_strengths("")
