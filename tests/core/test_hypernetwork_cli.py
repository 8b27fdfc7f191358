"""``hyperforge create | inspect | convert`` through core.cli.main."""

from __future__ import annotations

import json
import os

import pytest
import torch

from core.cli import main
from core.hypernetwork.fileformat import load_any, load_pt

SMALL = ["--enable-sizes", "16,8"]
OPTIONS = [
    *("--layer-structure", "1,1.5,1.5,1", "--activation-func", "swish", "--weight-init", "KaimingNormal"),
    *("--layer-norm", "--use-dropout", "--last-layer-dropout", "--activate-output", "--seed", "3"),
]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_create_writes_the_file_with_the_options(tmp_path, capsys):
    out = tmp_path / "style.pt"
    code, stdout, _ = run(capsys, "create", "style", "--out", str(out), *SMALL, *OPTIONS)
    assert code == 0
    summary = json.loads(stdout)
    assert summary["path"] == str(out) and summary["bytes"] == os.path.getsize(out)
    hn = load_pt(out)
    assert hn.name == "style" and hn.widths() == (16, 8)
    opts = hn.options
    assert opts.layer_structure == (1.0, 1.5, 1.5, 1.0) and opts.activation_func == "swish"
    assert opts.weight_initialization == "KaimingNormal" and opts.is_layer_norm and opts.activate_output
    assert opts.dropout_structure == (0.0, 0.3, 0.3, 0.0)
    # The same seed gives the same weights.
    _, again, _ = run(capsys, "create", "style", "--out", str(out), *SMALL, *OPTIONS, "--overwrite")
    assert json.loads(again)["sha256"] == summary["sha256"]


def test_create_explicit_dropout_structure_and_safetensors(tmp_path, capsys):
    out = tmp_path / "net.safetensors"
    code, _, _ = run(capsys, "create", "net", "--out", str(out), *SMALL, "--dropout-structure", "0,0.2,0")
    assert code == 0
    assert load_any(out).options.dropout_structure == (0.0, 0.2, 0.0)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--activation-func", "gelu"], "activation_func"),
        (["--layer-structure", "2,2,1"], "layer_structure"),
        (["--layer-structure", "1,x,1"], "layer_structure"),
        (["--weight-init", "Uniform"], "weight_initialization"),
        (["--dropout-structure", "0,0.3"], "dropout_structure"),
        (["--dropout-structure", "0,1.5,0"], "dropout_structure"),
        (["--enable-sizes", "768,abc"], "enable_sizes"),
        (["--enable-sizes", "768,768"], "enable_sizes"),
    ],
)
def test_bad_options_are_refused_and_nothing_is_written(tmp_path, capsys, args, option):
    out = tmp_path / "net.pt"
    code, _, err = run(capsys, "create", "net", "--out", str(out), *args)
    assert code == 2
    assert f"error: {option}:" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("name", "out", "fragment"),
    [
        ("net", "other.pt", "base name"),
        ("net", "net.ckpt", ".pt or .safetensors"),
        ("net", "missing/net.pt", "does not exist"),
        ("a/b", "b.pt", "name:"),
    ],
)
def test_bad_outputs_are_refused(tmp_path, capsys, name, out, fragment):
    code, _, err = run(capsys, "create", name, "--out", str(tmp_path / out), *SMALL)
    assert code == 2 and fragment in err
    assert os.listdir(tmp_path) == []


def test_existing_output_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "net.pt"
    out.write_bytes(b"keep me")
    code, _, err = run(capsys, "create", "net", "--out", str(out), *SMALL)
    assert code == 2 and "--overwrite" in err
    assert out.read_bytes() == b"keep me"


def test_inspect_prints_json(tmp_path, capsys):
    out = tmp_path / "net.pt"
    run(capsys, "create", "net", "--out", str(out), *SMALL, "--activation-func", "relu", "--layer-norm")
    code, stdout, _ = run(capsys, "inspect", str(out))
    assert code == 0
    info = json.loads(stdout)
    assert info["layout"] == "release" and info["widths"] == [16, 8]
    assert info["metadata"]["is_layer_norm"] is True
    assert info["loads_same_in_a1111_and_comfyui"] is False  # layer norm + relu + no activate_output


def test_inspect_bad_file_exits_2(tmp_path, capsys):
    (tmp_path / "x.pt").write_text("nope")
    code, _, err = run(capsys, "inspect", str(tmp_path / "x.pt"))
    assert code == 2 and "neither a torch .pt (zip) nor a .safetensors" in err


def test_convert_round_trip_and_release(tmp_path, capsys):
    pt = tmp_path / "net.pt"
    run(capsys, "create", "net", "--out", str(pt), *SMALL, "--layer-structure", "1,2,2,1", "--use-dropout")
    original = load_pt(pt)
    assert original.options.use_dropout
    code, _, _ = run(capsys, "convert", str(pt), str(tmp_path / "net.safetensors"))
    assert code == 0
    code, _, _ = run(capsys, "convert", str(tmp_path / "net.safetensors"), str(tmp_path / "back.pt"))
    assert code == 0
    back = load_pt(tmp_path / "back.pt")
    assert back.options == original.options and back.name == "back"
    assert all(torch.equal(a, b) for a, b in zip(original.parameters(), back.parameters(), strict=True))
    code, _, _ = run(capsys, "convert", str(pt), str(tmp_path / "rel.pt"), "--release")
    assert code == 0
    released = load_pt(tmp_path / "rel.pt")
    assert not released.options.use_dropout
    assert not any(isinstance(m, torch.nn.Dropout) for m in released.modules())


def test_convert_errors(tmp_path, capsys):
    code, _, err = run(capsys, "convert", str(tmp_path / "missing.pt"), str(tmp_path / "out.pt"))
    assert code == 2 and "no such file" in err
    assert not (tmp_path / "out.pt").exists()
