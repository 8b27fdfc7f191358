"""Hypernetwork files: .pt (training, release, legacy), .optim sidecar, .safetensors, inspect."""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import pytest
import torch
from safetensors import safe_open

from core.errors import FileFormatError, InvalidOptionError
from core.hypernetwork.fileformat import (
    inspect_file,
    load_any,
    load_optimizer_state,
    load_pt,
    load_safetensors,
    save_optimizer,
    save_pt,
    save_safetensors,
)
from core.hypernetwork.fileformat_dict import METADATA_KEYS
from core.hypernetwork.fileformat_zip import ALLOWED_ENTRY, save_torch_file, sha256_file
from core.hypernetwork.module import Hypernetwork, HypernetworkModule, apply_hypernetworks
from core.hypernetwork.options import HypernetworkOptions

DROPOUT_KW: dict[str, Any] = {
    "layer_structure": (1, 2, 2, 1),
    "activation_func": "relu",
    "is_layer_norm": True,
    "activate_output": True,
    "use_dropout": True,
    "last_layer_dropout": True,
}


def make(name: str = "net", seed: int = 0, **kwargs: Any) -> Hypernetwork:
    kwargs.setdefault("enable_sizes", (16, 8))
    kwargs.setdefault("weight_initialization", "XavierNormal")
    return Hypernetwork.new(name, HypernetworkOptions.create(**kwargs), seed=seed)


def pair_of(hn: Hypernetwork, width: int) -> tuple[HypernetworkModule, HypernetworkModule]:
    pair = hn.modules_for(width)
    assert pair is not None
    return pair


def assert_same_network(a: Hypernetwork, b: Hypernetwork) -> None:
    assert a.options == b.options
    assert (a.step, a.sd_checkpoint, a.sd_checkpoint_name, a.optional_info) == (
        b.step,
        b.sd_checkpoint,
        b.sd_checkpoint_name,
        b.optional_info,
    )
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def raw_torch_file(tmp_path, obj, name: str = "raw.pt") -> str:
    path = str(tmp_path / name)
    torch.save(obj, path)
    return path


# --- .pt -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs", [{}, DROPOUT_KW, {"layer_structure": (1, 1.5, 1), "activation_func": "swish"}]
)
def test_pt_round_trip(tmp_path, kwargs):
    hn = make(**kwargs)
    hn.step, hn.sd_checkpoint, hn.sd_checkpoint_name, hn.optional_info = 42, "0123456789", "sd15", "note"
    path = tmp_path / "net.pt"
    digest = save_pt(hn, path)
    assert digest == sha256_file(path)
    loaded = load_pt(path)
    assert loaded.name == "net"
    assert_same_network(hn, loaded)
    assert not loaded.training


def test_pt_is_the_a1111_dict(tmp_path):
    hn = make(**DROPOUT_KW)
    path = tmp_path / "net.pt"
    save_pt(hn, path)
    raw = torch.load(path, weights_only=True)
    assert list(raw) == [16, 8, *METADATA_KEYS]
    assert all(type(key) is int for key in list(raw)[:2])
    for width in (16, 8):
        k, v = raw[width]
        assert type(raw[width]) is tuple and type(k) is dict
        expected = list(hn.options.state_dict_shapes(width))
        assert list(k) == expected and list(v) == expected
        # Linear ReLU LN Dropout | Linear ReLU LN Dropout | Linear ReLU LN
        assert sorted({int(key.split(".")[1]) for key in k}) == [0, 2, 4, 6, 8, 10]
        for tensor in (*k.values(), *v.values()):
            assert tensor.dtype == torch.float32 and tensor.device.type == "cpu" and tensor.is_contiguous()
            assert tensor.untyped_storage().nbytes() == tensor.numel() * 4
    assert raw["layer_structure"] == [1.0, 2.0, 2.0, 1.0] and all(
        type(x) is float for x in raw["layer_structure"]
    )
    assert raw["dropout_structure"] == [0.0, 0.3, 0.3, 0.0]
    assert raw["use_dropout"] is True and raw["last_layer_dropout"] is True
    assert (
        raw["activation_func"] == "relu" and raw["activate_output"] is True and raw["is_layer_norm"] is True
    )
    assert raw["name"] == "net" and raw["step"] == 0 and raw["optional_info"] is None
    assert raw["weight_initialization"] == "XavierNormal" and raw["sd_checkpoint"] is None


def test_pt_zip_holds_only_allowed_entries_stored_and_loads_with_mmap(tmp_path):
    path = tmp_path / "net.pt"
    hn = make(**DROPOUT_KW)
    save_pt(hn, path)
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    names = [i.filename for i in infos]
    assert names[0] == "archive/data.pkl" and names[-1] == "archive/version"
    assert all(ALLOWED_ENTRY.match(n) for n in names)
    assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
    assert (
        sum(n.startswith("archive/data/") for n in names) == 2 * 2 * 12
    )  # widths x (k, v) x (3 Linear + 3 LayerNorm) x (weight, bias)
    with open(path, "rb") as f:
        data = f.read()
    for info in infos:
        if "/data/" in info.filename:
            name_len, extra_len = (
                int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little"),
                int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little"),
            )
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0
    mapped = torch.load(path, weights_only=True, mmap=True)
    plain = torch.load(path, weights_only=True)
    assert all(torch.equal(mapped[16][0][k], plain[16][0][k]) for k in plain[16][0])
    assert torch.equal(plain[8][1]["linear.0.weight"], pair_of(hn, 8)[1].state_dict()["linear.0.weight"])


def test_pt_writes_are_deterministic_and_atomic(tmp_path):
    hn = make()
    first = save_pt(hn, tmp_path / "net.pt")
    second = save_pt(hn, tmp_path / "net.pt")
    assert first == second
    assert sorted(os.listdir(tmp_path)) == ["net.pt"]  # no temp files left behind
    hn.step = -1
    with pytest.raises(InvalidOptionError):
        save_pt(hn, tmp_path / "other.pt")
    assert sorted(os.listdir(tmp_path)) == ["net.pt"]


def test_stored_name_is_the_files_base_name(tmp_path):
    hn = make("net")
    save_pt(hn, tmp_path / "net-500.pt")
    assert torch.load(tmp_path / "net-500.pt", weights_only=True)["name"] == "net-500"
    assert hn.name == "net"


def test_release_layout(tmp_path):
    hn = make(**DROPOUT_KW)
    save_pt(hn, tmp_path / "train.pt")
    save_pt(hn, tmp_path / "rel.pt", release=True)
    raw = torch.load(tmp_path / "rel.pt", weights_only=True)
    assert raw["use_dropout"] is False and raw["last_layer_dropout"] is False
    assert raw["dropout_structure"] == [0.0, 0.0, 0.0, 0.0]
    # Linear ReLU LN | Linear ReLU LN | Linear ReLU LN without Dropout layers: 0,2,3,5,6,8
    assert sorted({int(k.split(".")[1]) for k in raw[8][0]}) == [0, 2, 3, 5, 6, 8]
    rel = load_pt(tmp_path / "rel.pt")
    train = load_pt(tmp_path / "train.pt")
    assert rel.options == hn.options.release()
    assert not any(isinstance(m, torch.nn.Dropout) for m in rel.modules())
    assert inspect_file(tmp_path / "rel.pt")["layout"] == "release"
    assert inspect_file(tmp_path / "train.pt")["layout"] == "training"
    ctx = torch.randn(2, 3, 8)
    with torch.no_grad():
        for a, b in zip(pair_of(train, 8), pair_of(rel, 8), strict=True):
            assert torch.equal(a(ctx), b(ctx))  # eval: dropout is identity, same function


def test_legacy_format(tmp_path):
    torch.manual_seed(0)
    legacy = {}
    for d in (8, 16):
        pair = []
        for _ in range(2):
            pair.append(
                {
                    "linear1.weight": torch.randn(2 * d, d),
                    "linear1.bias": torch.randn(2 * d),
                    "linear2.weight": torch.randn(d, 2 * d),
                    "linear2.bias": torch.randn(d),
                }
            )
        legacy[d] = tuple(pair)
    path = str(tmp_path / "old.pt")
    save_torch_file(legacy, path)  # a clean A1111 zip, as A1111's torch wrote it
    hn = load_pt(path)
    assert hn.options.layer_structure == (1.0, 2.0, 1.0) and hn.options.activation_func == "linear"
    assert hn.widths() == (8, 16) and hn.name == "old"
    k = pair_of(hn, 16)[0].state_dict()
    assert torch.equal(k["linear.0.weight"], legacy[16][0]["linear1.weight"])
    assert torch.equal(k["linear.1.bias"], legacy[16][0]["linear2.bias"])
    info = inspect_file(path)
    assert info["layout"] == "legacy" and info["loads_same_in_a1111_and_comfyui"] is True


def test_old_a1111_file_without_newer_keys(tmp_path):
    hn = make(activation_func="relu")
    save_pt(hn, tmp_path / "net.pt")
    raw = torch.load(tmp_path / "net.pt", weights_only=True)
    for key in ("activate_output", "dropout_structure", "last_layer_dropout", "optional_info"):
        del raw[key]
    raw["use_dropout"] = True  # A1111 wrote the checkbox; [1,2,1] still derives no dropout
    path = raw_torch_file(tmp_path, raw, "old.pt")
    loaded = load_pt(path)
    assert loaded.options.activate_output is True  # A1111's default for a missing key
    assert loaded.options.dropout_structure == (0.0, 0.0, 0.0)
    info = inspect_file(path)
    assert set(info["metadata_defaulted"]) == {
        "activate_output",
        "dropout_structure",
        "last_layer_dropout",
        "optional_info",
    }
    assert info["loads_same_in_a1111_and_comfyui"] is False
    assert any("activate_output" in r for r in info["reasons"])


def test_a1111_file_with_use_dropout_but_zero_structure_loads(tmp_path):
    hn = make()
    save_pt(hn, tmp_path / "net.pt")
    raw = torch.load(tmp_path / "net.pt", weights_only=True)
    raw["use_dropout"] = True
    path = raw_torch_file(tmp_path, raw, "a.pt")
    assert not load_pt(path).options.use_dropout
    assert any("disagree" in w for w in inspect_file(path)["warnings"])


# --- bad files -----------------------------------------------------------------------------------


class NotAllowed:
    """A class weights_only refuses: unpickling it would import and call code."""


def _valid_raw(tmp_path):
    save_pt(make(), tmp_path / "valid.pt")
    return torch.load(tmp_path / "valid.pt", weights_only=True)


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda raw: raw[8][0].pop("linear.0.bias"), "missing ['linear.0.bias']"),
        (
            lambda raw: raw[8][1].__setitem__("linear.7.weight", torch.zeros(3)),
            "unexpected ['linear.7.weight']",
        ),
        (lambda raw: raw[16][0].__setitem__("linear.0.weight", torch.zeros(32, 15)), "has shape (32, 15)"),
        (
            lambda raw: raw[16][0].__setitem__("linear.0.weight", torch.zeros(32, 16, dtype=torch.int64)),
            "non-float",
        ),
        (lambda raw: raw.__setitem__("768", raw.pop(8)), "is a string"),
        (lambda raw: raw.__setitem__(8, raw[8][0]), "(k, v) pair"),
        (lambda raw: raw.__setitem__("step", "5"), "'step' should be int"),
        (lambda raw: raw.__setitem__("step", True), "'step' should be int"),
        (lambda raw: raw.__setitem__("is_layer_norm", 1), "'is_layer_norm' should be bool"),
        (lambda raw: raw.__setitem__("layer_structure", "1,2,1"), "'layer_structure' should be list"),
        (lambda raw: raw.__setitem__("layer_structure", [1, 3, 1]), "has shape"),
        (lambda raw: raw.__setitem__("activation_func", "gelu"), "activation_func"),
        (lambda raw: raw.__setitem__("dropout_structure", [0, 0.5]), "dropout_structure"),
        (lambda raw: raw.__setitem__("name", None), "'name' should be str"),
        (lambda raw: [raw.pop(8), raw.pop(16)], "no width keys"),
        (lambda raw: raw.__setitem__(2.5, 1), "neither an int width"),
    ],
)
def test_bad_contents_are_explained(tmp_path, mutate, fragment):
    raw = _valid_raw(tmp_path)
    mutate(raw)
    path = raw_torch_file(tmp_path, raw, "bad.pt")
    with pytest.raises(FileFormatError) as info:
        load_pt(path)
    assert fragment in str(info.value)
    assert "bad.pt" in str(info.value)


def test_not_a_dict(tmp_path):
    with pytest.raises(FileFormatError, match="holds a list"):
        load_pt(raw_torch_file(tmp_path, [1, 2]))


def test_pickle_with_code_is_refused(tmp_path):
    path = raw_torch_file(tmp_path, {768: NotAllowed(), "step": 0})
    with pytest.raises(FileFormatError, match="weights-only"):
        load_pt(path)


def test_truncated_and_non_zip_files(tmp_path):
    save_pt(make(), tmp_path / "net.pt")
    data = (tmp_path / "net.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match="truncated"):
        load_pt(tmp_path / "cut.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(FileFormatError, match="not a zip"):
        load_pt(tmp_path / "text.pt")
    with pytest.raises(FileFormatError, match="no such file"):
        load_pt(tmp_path / "missing.pt")
    with pytest.raises(FileFormatError, match="neither"):
        load_any(tmp_path / "text.pt")


# --- optimizer sidecar ---------------------------------------------------------------------------


def test_optimizer_sidecar(tmp_path):
    hn = make()
    hn.train()
    optimizer = torch.optim.AdamW(hn.parameters_in_a1111_order(), lr=1e-3)
    for width in hn.widths():
        k, v = apply_hypernetworks(torch.randn(2, width), [hn])
        (k.square().sum() + v.square().sum()).backward()
    optimizer.step()
    pt = tmp_path / "net.pt"
    digest = save_pt(hn, pt)
    save_optimizer(pt, optimizer, digest)
    sidecar_path = str(pt) + ".optim"
    sidecar = torch.load(sidecar_path, weights_only=True)
    assert sidecar["optimizer_name"] == "AdamW" and sidecar["hash"] == sha256_file(pt)[:10]
    with zipfile.ZipFile(sidecar_path) as zf:
        assert all(ALLOWED_ENTRY.match(n) for n in zf.namelist())
    state = load_optimizer_state(pt)
    assert state is not None
    fresh = torch.optim.AdamW(hn.parameters_in_a1111_order(), lr=1e-3)
    fresh.load_state_dict(state)
    assert len(fresh.state_dict()["state"]) == len(hn.parameters_in_a1111_order())
    for index, values in optimizer.state_dict()["state"].items():
        assert torch.equal(fresh.state_dict()["state"][index]["exp_avg"], values["exp_avg"])
    assert load_optimizer_state(pt, optimizer_name="SGD") is None
    # The .pt changes (a later save) but the sidecar stays: its state belongs to another file.
    hn.step = 1
    save_pt(hn, pt)
    assert load_optimizer_state(pt) is None
    assert load_optimizer_state(tmp_path / "other.pt") is None  # no sidecar at all
    with pytest.raises(InvalidOptionError):
        save_optimizer(pt, optimizer, "abc")


# --- safetensors ---------------------------------------------------------------------------------


def test_safetensors_round_trips_losslessly(tmp_path):
    hn = make(**DROPOUT_KW)
    hn.step, hn.optional_info, hn.sd_checkpoint = 7, "info", "abcdef0123"
    pt_digest = save_pt(hn, tmp_path / "net.pt")
    save_safetensors(load_pt(tmp_path / "net.pt"), tmp_path / "net.safetensors")
    with safe_open(str(tmp_path / "net.safetensors"), framework="pt") as f:
        meta = f.metadata()
        names = set(f.keys())
    assert "hypernetwork.16.k.linear.0.weight" in names and "hypernetwork.8.v.linear.10.bias" in names
    assert set(METADATA_KEYS) <= set(meta) and json.loads(meta["layer_structure"]) == [1.0, 2.0, 2.0, 1.0]
    assert json.loads(meta["widths"]) == [16, 8] and json.loads(meta["sd_checkpoint"]) == "abcdef0123"
    back = load_safetensors(tmp_path / "net.safetensors")
    assert_same_network(hn, back)
    # .pt -> .safetensors -> .pt gives the same bytes.
    assert save_pt(back, tmp_path / "net.pt") == pt_digest
    assert_same_network(hn, load_any(tmp_path / "net.safetensors"))
    save_safetensors(hn, tmp_path / "rel.safetensors", release=True)
    assert load_safetensors(tmp_path / "rel.safetensors").options == hn.options.release()


def test_safetensors_errors(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}     ")
    with pytest.raises(FileFormatError, match="safetensors"):
        load_safetensors(tmp_path / "x.safetensors")
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(FileFormatError, match="not a hypernetwork"):
        load_safetensors(tmp_path / "other.safetensors")


def test_load_any_dispatches_by_content(tmp_path):
    hn = make()
    save_pt(hn, tmp_path / "a.pt")
    os.rename(tmp_path / "a.pt", tmp_path / "a.bin")
    save_safetensors(hn, tmp_path / "b.safetensors")
    os.rename(tmp_path / "b.safetensors", tmp_path / "b.bin")
    assert_same_network(hn, load_any(tmp_path / "a.bin"))
    assert_same_network(hn, load_any(tmp_path / "b.bin"))


# --- inspect and sizes ---------------------------------------------------------------------------


def test_inspect_file(tmp_path):
    hn = make(**DROPOUT_KW)
    save_pt(hn, tmp_path / "net.pt")
    info = inspect_file(tmp_path / "net.pt")
    json.dumps(info)  # JSON-able
    assert info["format"] == "pt" and info["layout"] == "training"
    assert info["widths"] == [16, 8] and info["parameter_count"] == hn.options.parameter_count()
    assert info["bytes"] == os.path.getsize(tmp_path / "net.pt") and info["sha256"] == sha256_file(
        tmp_path / "net.pt"
    )
    assert info["metadata"]["dropout_structure"] == [0.0, 0.3, 0.3, 0.0]
    assert info["loads_same_in_a1111_and_comfyui"] is False and any("Dropout" in r for r in info["reasons"])
    save_pt(hn, tmp_path / "rel.pt", release=True)
    rel = inspect_file(tmp_path / "rel.pt")
    assert rel["loads_same_in_a1111_and_comfyui"] is True and rel["reasons"] == []
    raw = torch.load(tmp_path / "rel.pt", weights_only=True)
    plain = raw_torch_file(tmp_path, raw, "plain.pt")  # torch's own zip: byteorder etc. entries
    assert any("refuses" in r for r in inspect_file(plain)["reasons"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"enable_sizes": (8,)},
        DROPOUT_KW,
        {
            "layer_structure": (1, 2, 2, 2, 2, 2, 1),
            "is_layer_norm": True,
            "enable_sizes": (16, 8, 32, 24, 40),
        },
        {"layer_structure": (1, 1.33, 1), "enable_sizes": (320,)},
    ],
)
@pytest.mark.parametrize("release", [False, True])
def test_estimated_file_bytes_is_exact(tmp_path, kwargs, release):
    hn = make(**kwargs)
    path = tmp_path / "some-name.pt"
    save_pt(hn, path, release=release)
    assert hn.options.estimated_file_bytes(release=release, name="some-name") == os.path.getsize(path)


def test_default_network_file_size_matches_a1111(tmp_path):
    hn = Hypernetwork.new("hypernetwork", HypernetworkOptions.create(), seed=0)
    path = tmp_path / "hypernetwork.pt"
    save_pt(hn, path)
    size = os.path.getsize(path)
    assert abs(size - 87_770_729) / 87_770_729 < 1e-4
    assert hn.options.estimated_file_bytes() == size


def test_pt_file_is_readable_by_others(tmp_path):
    # A1111 or ComfyUI may run as another user than the service that wrote the file.
    save_pt(make(), tmp_path / "net.pt")
    assert oct(os.stat(tmp_path / "net.pt").st_mode & 0o777) == oct(0o644)


# The replicas of A1111's and ComfyUI's loaders, and the tests that run our files through them,
# are in test_a1111_comfy_compat.py.
