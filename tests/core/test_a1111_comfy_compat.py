"""Our files in the two programs that load them: AUTOMATIC1111's webui and ComfyUI (spec §1-3).

The replicas below re-express, in our own code, what those programs do when they read a
hypernetwork ``.pt`` and apply it. They were checked against the programs' source; each names
the file and function it mirrors. They need only torch, so the tests run without either program.
"""

from __future__ import annotations

import _codecs
import builtins
import collections
import hashlib
import importlib
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from core.hypernetwork.fileformat import (
    comfyui_layer_kinds,
    inspect_file,
    load_pt,
    read_pt,
    save_optimizer,
    save_pt,
)
from core.hypernetwork.fileformat_zip import save_torch_file
from core.hypernetwork.module import ACTIVATION_CLASSES, Hypernetwork, HypernetworkModule, apply_hypernetworks
from core.hypernetwork.options import ALLOWED_ACTIVATIONS, HypernetworkOptions, dropout_structure_for

# =================================================================================================
# A1111's safe loader: modules/safe.py (RestrictedUnpickler, check_zip_filenames, check_pt,
# load_with_extra). A1111 replaces torch.load with it, so every .pt and .pt.optim goes through it.
# =================================================================================================


class A1111Refused(Exception):
    """The safe loader refused the file (A1111 logs it and gets None instead of the dict)."""


# Zip entries A1111 accepts: <root>/data.pkl, <root>/version, <root>/data/<digits>; nothing else.
A1111_ZIP_ENTRY = re.compile(r"^([^/]+)/((data/\d+)|version|(data\.pkl))$")
_A1111_DATA_PKL = re.compile(r"^([^/]+)/data\.pkl$")
# The globals RestrictedUnpickler.find_class resolves (module -> names); everything else is refused.
A1111_ALLOWED_GLOBALS: dict[str, frozenset[str]] = {
    "collections": frozenset({"OrderedDict"}),
    "torch._utils": frozenset(
        {"_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_device_tensor_from_numpy"}
    ),
    "torch": frozenset(
        {
            "FloatStorage",
            "HalfStorage",
            "IntStorage",
            "LongStorage",
            "DoubleStorage",
            "ByteStorage",
            "float32",
            "BFloat16Storage",
        }
    ),
    "torch.nn.modules.container": frozenset({"ParameterDict"}),
    "numpy.core.multiarray": frozenset({"scalar", "_reconstruct"}),
    "numpy": frozenset({"dtype", "ndarray"}),
    "_codecs": frozenset({"encode"}),
    "pytorch_lightning.callbacks": frozenset({"model_checkpoint"}),
    "pytorch_lightning.callbacks.model_checkpoint": frozenset({"ModelCheckpoint"}),
    "__builtin__": frozenset({"set"}),
}


class _A1111RestrictedUnpickler(pickle.Unpickler):
    """Unpickles data.pkl on its own (not through torch.load), so every global meets the list."""

    def persistent_load(self, pid: Any) -> Any:
        # A1111 never reads tensor data while checking: each storage becomes an empty one.
        if pid[0] != "storage":
            raise A1111Refused(f"persistent id {pid[0]!r} is not a storage")
        return torch.storage.TypedStorage(_internal=True)

    def find_class(self, module: str, name: str) -> Any:
        if name not in A1111_ALLOWED_GLOBALS.get(module, frozenset()):
            raise A1111Refused(f"global '{module}/{name}' is forbidden")
        if module == "__builtin__":
            return builtins.set
        if module == "_codecs":
            return _codecs.encode
        return getattr(importlib.import_module(module), name)


def _a1111_check(path: str | os.PathLike[str]) -> None:
    """check_pt: zip entry names, exactly one data.pkl, then the restricted unpickling."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            bad = [n for n in names if A1111_ZIP_ENTRY.match(n) is None]
            if bad:
                raise A1111Refused(f"bad file inside {path}: {bad[0]}")
            pickles = [n for n in names if _A1111_DATA_PKL.match(n)]
            if len(pickles) != 1:
                raise A1111Refused(f"{len(pickles)} data.pkl entries in {path}, need exactly one")
            with zf.open(pickles[0]) as f:
                _A1111RestrictedUnpickler(f).load()
    except zipfile.BadZipFile:
        # The pre-zip torch format: five pickles in a row, each checked the same way.
        with open(path, "rb") as f:
            unpickler = _A1111RestrictedUnpickler(f)
            for _ in range(5):
                unpickler.load()


def a1111_check_pt(path: str | os.PathLike[str]) -> None:
    """Raise A1111Refused where load_with_extra refuses: anything check_pt raises."""
    try:
        _a1111_check(path)
    except A1111Refused:
        raise
    except Exception as exc:
        raise A1111Refused(f"{type(exc).__name__}: {exc}") from exc


def a1111_torch_load(path: str | os.PathLike[str]) -> Any:
    """A1111's patched torch.load: the check, then the real torch.load (A1111's torch: weights_only off)."""
    a1111_check_pt(path)
    return torch.load(path, map_location="cpu", weights_only=False)


# =================================================================================================
# A1111's hypernetwork: modules/hypernetworks/hypernetwork.py (HypernetworkModule, parse_dropout_
# structure, Hypernetwork.load / weights / set_multiplier, apply_single_hypernetwork, apply_hypernetworks).
# =================================================================================================


def _a1111_activations() -> dict[str, type[nn.Module]]:
    """HypernetworkModule.activation_dict: seven names of its own, then every class defined in
    torch.nn.modules.activation under its lower-case class name (so "swish" stays Hardswish)."""
    table: dict[str, type[nn.Module]] = {
        "linear": nn.Identity,
        "relu": nn.ReLU,
        "leakyrelu": nn.LeakyReLU,
        "elu": nn.ELU,
        "swish": nn.Hardswish,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
    }
    source = torch.nn.modules.activation
    for attr, obj in vars(source).items():
        if isinstance(obj, type) and obj.__module__ == source.__name__:
            table[attr.lower()] = obj
    return table


A1111_ACTIVATIONS = _a1111_activations()
_A1111_LEGACY_KEYS = {
    "linear1.weight": "linear.0.weight",
    "linear1.bias": "linear.0.bias",
    "linear2.weight": "linear.1.weight",
    "linear2.bias": "linear.1.bias",
}


def a1111_dropout_structure(
    layer_structure: list[float] | None, use_dropout: bool, last: bool
) -> list[float]:
    """parse_dropout_structure: the structure A1111 derives when a file has none."""
    layers = layer_structure if layer_structure is not None else [1, 2, 1]
    if not use_dropout:
        return [0] * len(layers)
    # Note: for a two-entry structure this has three entries (A1111 then drops the output).
    return [0, *([0.3] * (len(layers) - 3)), 0.3 if last else 0, 0]


class A1111Module(nn.Module):
    """HypernetworkModule: the ``linear`` Sequential A1111 builds and strictly loads; residual forward."""

    def __init__(
        self,
        dim: int,
        state_dict: dict[str, torch.Tensor] | None,
        layer_structure: list[float],
        activation_func: str | None,
        add_layer_norm: bool,
        activate_output: bool,
        dropout_structure: list[float] | None,
    ) -> None:
        super().__init__()
        self.multiplier = 1.0
        assert layer_structure[0] == 1 and layer_structure[-1] == 1
        count = len(layer_structure)
        layers: list[nn.Module] = []
        for i in range(count - 1):
            width_out = int(dim * layer_structure[i + 1])
            layers.append(nn.Linear(int(dim * layer_structure[i]), width_out))
            # No activation for "linear"/None, nor after the last Linear unless activate_output.
            skip = activation_func in ("linear", None) or (i >= count - 2 and not activate_output)
            if not skip:
                if activation_func not in A1111_ACTIVATIONS:
                    raise RuntimeError(
                        f"hypernetwork uses an unsupported activation function: {activation_func}"
                    )
                layers.append(A1111_ACTIVATIONS[activation_func]())
            if add_layer_norm:  # after every Linear, the last one included
                layers.append(nn.LayerNorm(width_out))
            if dropout_structure is not None and dropout_structure[i + 1] > 0:
                assert 0 < dropout_structure[i + 1] < 1
                layers.append(nn.Dropout(p=dropout_structure[i + 1]))
        self.linear = nn.Sequential(*layers)
        if state_dict is not None:
            # fix_old_state_dict renames the first format's keys; load_state_dict is strict.
            renamed = {_A1111_LEGACY_KEYS.get(key, key): value for key, value in state_dict.items()}
            self.load_state_dict(renamed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(x) * (self.multiplier if not self.training else 1)


@dataclass
class A1111Hypernetwork:
    """What Hypernetwork.load keeps: the modules per int width and the metadata it reads."""

    layers: dict[int, tuple[A1111Module, A1111Module]]
    name: str
    step: int
    meta: dict[str, Any] = field(default_factory=dict)

    def set_multiplier(self, multiplier: float) -> None:
        for pair in self.layers.values():
            for module in pair:
                module.multiplier = multiplier

    def train(self, mode: bool = True) -> None:
        for pair in self.layers.values():
            for module in pair:
                module.train(mode)

    def weights(self) -> list[torch.Tensor]:
        """Hypernetwork.weights: the optimizer's parameter order (widths, then k, then v)."""
        return [p for pair in self.layers.values() for module in pair for p in module.parameters()]


def a1111_load(path: str | os.PathLike[str]) -> A1111Hypernetwork:
    """Hypernetwork.load: each metadata key with A1111's default; only int keys are widths."""
    sd = a1111_torch_load(path)
    layer_structure = sd.get("layer_structure", [1, 2, 1])
    activation_func = sd.get("activation_func", None)
    add_layer_norm = sd.get("is_layer_norm", False)
    dropout_structure = sd.get("dropout_structure", None)
    # A non-zero structure turns dropout on whatever the flag says; otherwise the flag is read.
    if dropout_structure is not None and any(dropout_structure):
        use_dropout = True
    else:
        use_dropout = sd.get("use_dropout", False)
    activate_output = sd.get("activate_output", True)
    last_layer_dropout = sd.get("last_layer_dropout", False)
    if dropout_structure is None:
        dropout_structure = a1111_dropout_structure(layer_structure, use_dropout, last_layer_dropout)
    args = (layer_structure, activation_func, add_layer_norm, activate_output, dropout_structure)
    layers = {
        size: (A1111Module(size, pair[0], *args), A1111Module(size, pair[1], *args))
        for size, pair in sd.items()
        if type(size) is int  # "768" (str) would be skipped silently
    }
    hn = A1111Hypernetwork(
        layers,
        name=sd.get("name", Path(path).stem),
        step=sd.get("step", 0),
        meta={
            "layer_structure": layer_structure,
            "activation_func": activation_func,
            "weight_init": sd.get("weight_initialization", "Normal"),
            "add_layer_norm": add_layer_norm,
            "use_dropout": use_dropout,
            "activate_output": activate_output,
            "dropout_structure": dropout_structure,
            "sd_checkpoint": sd.get("sd_checkpoint", None),
            "sd_checkpoint_name": sd.get("sd_checkpoint_name", None),
            "optional_info": sd.get("optional_info", None),
        },
    )
    hn.train(False)  # load() ends in eval()
    return hn


def a1111_apply(
    networks: list[A1111Hypernetwork], context: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """apply_hypernetworks: k and v each pass through every network in turn, looked up by k's width."""
    context_k, context_v = context, context
    for hn in networks:
        pair = hn.layers.get(context_k.shape[2])
        if pair is None:
            continue
        context_k, context_v = pair[0](context_k), pair[1](context_v)
    return context_k, context_v


def a1111_optimizer_hash(pt_path: str | os.PathLike[str]) -> str:
    """Hypernetwork.shorthash: the first 10 hex digits of the .pt's sha256, compared to the sidecar's."""
    return hashlib.sha256(Path(pt_path).read_bytes()).hexdigest()[:10]


# =================================================================================================
# ComfyUI: comfy_extras/nodes_hypernetwork.py (load_hypernetwork_patch, hypernetwork_patch.__call__),
# comfy/utils.py (load_torch_file) and the attn1/attn2 patch loops of BasicTransformerBlock in
# comfy/ldm/modules/attention.py.
# =================================================================================================

COMFY_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "leakyrelu": nn.LeakyReLU,
    "elu": nn.ELU,
    "swish": nn.Hardswish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softsign": nn.Softsign,
    "mish": nn.Mish,
}


def _comfy_load_torch_file(path: str | os.PathLike[str]) -> Any:
    """load_torch_file(safe_load=True): weights-only torch.load, then its unwrapping rules."""
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in loaded:
        return loaded["state_dict"]
    if len(loaded) == 1:
        only = loaded[next(iter(loaded))]
        return only if isinstance(only, dict) else loaded
    return loaded


def _comfy_build(weights: dict[str, torch.Tensor], flags: dict[str, Any]) -> nn.Sequential:
    """One module: layers rebuilt from the ``.weight`` keys in file order, LayerNorm keys counted too."""
    names = [key[: -len(".weight")] for key in weights if key.endswith(".weight")]
    layers: list[nn.Module] = []
    i = 0
    while i < len(names):
        last, penultimate = i == len(names) - 1, i == len(names) - 2
        w = weights[f"{names[i]}.weight"]
        linear = nn.Linear(w.shape[1], w.shape[0])
        linear.load_state_dict({"weight": w, "bias": weights[f"{names[i]}.bias"]})
        layers.append(linear)
        if flags["activation_func"] != "linear" and (not last or flags["activate_output"]):
            layers.append(COMFY_ACTIVATIONS[flags["activation_func"]]())
        if flags["is_layer_norm"]:
            i += 1  # the next weight key is taken to be this Linear's LayerNorm
            ln_w = weights[f"{names[i]}.weight"]
            norm = nn.LayerNorm(ln_w.shape[0])
            norm.load_state_dict({"weight": ln_w, "bias": weights[f"{names[i]}.bias"]})
            layers.append(norm)
        # Dropout comes from the two flags (dropout_structure is never read), with "last" and
        # "penultimate" counted among the weight keys as above.
        if flags["use_dropout"] and not last and (not penultimate or flags["last_layer_dropout"]):
            layers.append(nn.Dropout(p=0.3))
        i += 1
    return nn.Sequential(*layers)


class ComfyPatch:
    """hypernetwork_patch: k + k_mlp(k) * strength, v + v_mlp(v) * strength, by k's last dim."""

    def __init__(self, hypernet: dict[int, nn.ModuleList], strength: float) -> None:
        self.hypernet = hypernet
        self.strength = strength

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dim = k.shape[-1]
        if dim in self.hypernet:
            pair = self.hypernet[dim]
            k = k + pair[0](k) * self.strength
            v = v + pair[1](v) * self.strength
        return q, k, v


def comfy_load(path: str | os.PathLike[str], strength: float) -> ComfyPatch | None:
    """load_hypernetwork_patch: None (logged, model left unpatched) for an activation it lacks."""
    sd = _comfy_load_torch_file(path)
    flags = {
        "activation_func": sd.get("activation_func", "linear"),
        "is_layer_norm": sd.get("is_layer_norm", False),
        "use_dropout": sd.get("use_dropout", False),
        "activate_output": sd.get("activate_output", False),  # A1111's default is True
        "last_layer_dropout": sd.get("last_layer_dropout", False),
    }
    if flags["activation_func"] not in COMFY_ACTIVATIONS:
        return None
    out: dict[int, nn.ModuleList] = {}
    for key in sd:
        try:
            dim = int(key)
        except (TypeError, ValueError):
            continue
        # The modules stay in training mode: ComfyUI never calls eval(), so Dropout is live.
        out[dim] = nn.ModuleList([_comfy_build(sd[dim][index], flags) for index in (0, 1)])
    return ComfyPatch(out, strength)


def comfy_apply(patches: list[ComfyPatch], context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The attn patch loop: value starts as the context; each loaded patch runs in turn on (q, k, v)."""
    q, k, v = context, context, context
    for patch in patches:
        q, k, v = patch(q, k, v, {})
    return k, v


# =================================================================================================
# Helpers
# =================================================================================================

WIDTHS = (16, 8)
DROPOUT_KW: dict[str, Any] = {
    "layer_structure": (1, 2, 2, 1),
    "activation_func": "relu",
    "is_layer_norm": True,
    "activate_output": True,
    "use_dropout": True,
    "last_layer_dropout": True,
}
# Option sets that cover every branch of the layout rules.
OPTION_CASES: list[dict[str, Any]] = [
    {},
    {"activation_func": "relu", "is_layer_norm": True},
    {"activation_func": "relu", "is_layer_norm": True, "activate_output": True},
    {"activation_func": "swish", "activate_output": True},
    {"activation_func": "leakyrelu", "use_dropout": True, "last_layer_dropout": True},
    {"layer_structure": (1, 2, 2, 1), "activation_func": "elu", "use_dropout": True},
    {"layer_structure": (1, 1.5, 2.25, 1), "activation_func": "mish", "dropout_structure": (0, 0.1, 0.2, 0)},
    {"layer_structure": (1, 2, 2, 1), "is_layer_norm": True, "use_dropout": True, "last_layer_dropout": True},
    {
        "layer_structure": (1, 2, 1),
        "activation_func": "softsign",
        "is_layer_norm": True,
        "activate_output": True,
    },
    DROPOUT_KW,
]


def make(name: str = "net", seed: int = 0, **kwargs: Any) -> Hypernetwork:
    """A network with large random weights (LayerNorm's near-zero init would hide differences)."""
    kwargs.setdefault("enable_sizes", WIDTHS)
    hn = Hypernetwork.new(name, HypernetworkOptions.create(**kwargs), seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in hn.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return hn


def context(width: int = 8, seed: int = 0) -> torch.Tensor:
    """A (batch, tokens, width) attention context."""
    return torch.randn(2, 3, width, generator=torch.Generator().manual_seed(seed))


def a1111_args(options: HypernetworkOptions) -> tuple[Any, ...]:
    """The arguments A1111's Hypernetwork passes to HypernetworkModule for these options."""
    return (
        list(options.layer_structure),
        options.activation_func,
        options.is_layer_norm,
        options.activate_output,
        list(options.dropout_structure),
    )


def describe(sequential: nn.Sequential) -> list[tuple[str, float]]:
    """Layer classes in order, with each Dropout's rate."""
    return [(type(layer).__name__, getattr(layer, "p", 0.0)) for layer in sequential]


# =================================================================================================
# Activations and layout
# =================================================================================================


def test_activation_names_are_what_both_programs_build_with_the_same_classes():
    ours = {"linear": nn.Identity, **ACTIVATION_CLASSES}
    assert set(ours) == ALLOWED_ACTIVATIONS == set(COMFY_ACTIVATIONS)
    for name in ALLOWED_ACTIVATIONS:
        assert ours[name] is COMFY_ACTIVATIONS[name] is A1111_ACTIVATIONS[name], name
    assert A1111_ACTIVATIONS["swish"] is nn.Hardswish and A1111_ACTIVATIONS["silu"] is nn.SiLU
    # A1111 accepts more (every torch activation by class name); ComfyUI does not, so we refuse them.
    assert {"gelu", "silu", "prelu", "softmax"} <= set(A1111_ACTIVATIONS) - ALLOWED_ACTIVATIONS


@pytest.mark.parametrize("kwargs", OPTION_CASES)
def test_our_sequential_is_a1111s(kwargs):
    options = HypernetworkOptions.create(**{"enable_sizes": WIDTHS, **kwargs})
    for width in WIDTHS:
        ours = HypernetworkModule(width, options)
        theirs = A1111Module(width, None, *a1111_args(options))
        assert describe(ours.linear) == describe(theirs.linear)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {
            k: v.shape for k, v in theirs.state_dict().items()
        }
        # Strict both ways: A1111 loads our tensors, we load A1111's.
        theirs.load_state_dict(ours.state_dict())
        HypernetworkModule(width, options, state_dict=theirs.state_dict())


@pytest.mark.parametrize("structure", [(1, 2, 1), (1, 2, 2, 1), (1, 2, 4, 2, 1), (1, 1.5, 1.5, 1.5, 1)])
@pytest.mark.parametrize(
    ("use_dropout", "last"), [(False, False), (False, True), (True, False), (True, True)]
)
def test_dropout_derivation_is_a1111s(structure, use_dropout, last):
    expected = a1111_dropout_structure(list(structure), use_dropout, last)
    assert list(dropout_structure_for(structure, use_dropout, last)) == expected


# =================================================================================================
# A1111: safe loader, load, forward, stacking, optimizer sidecar
# =================================================================================================


def _trained(hn: Hypernetwork) -> torch.optim.Optimizer:
    hn.train()
    optimizer = torch.optim.AdamW(hn.parameters_in_a1111_order(), lr=1e-3)
    for width in hn.widths():
        k, v = apply_hypernetworks(context(width), [hn])
        (k.square().mean() + v.square().mean()).backward()
    optimizer.step()
    hn.eval()
    return optimizer


@pytest.mark.parametrize("release", [False, True])
@pytest.mark.parametrize("kwargs", OPTION_CASES)
def test_a1111_loads_our_files_and_computes_the_same(tmp_path, kwargs, release):
    hn = make(**kwargs)
    hn.step, hn.sd_checkpoint, hn.sd_checkpoint_name, hn.optional_info = 12, "0123456789", "sd15", "note"
    path = tmp_path / "net.pt"
    save_pt(hn, path, release=release)
    theirs = a1111_load(path)
    assert list(theirs.layers) == list(WIDTHS)
    assert (theirs.name, theirs.step) == ("net", 12)
    assert theirs.meta["sd_checkpoint"] == "0123456789" and theirs.meta["optional_info"] == "note"
    options = hn.options.release() if release else hn.options
    assert theirs.meta["use_dropout"] == options.use_dropout
    assert theirs.meta["dropout_structure"] == list(options.dropout_structure)
    for width in WIDTHS:
        assert describe(theirs.layers[width][0].linear) == describe(HypernetworkModule(width, options).linear)
    # Inference: the strength is A1111's multiplier.
    hn.strength = 0.7
    theirs.set_multiplier(0.7)
    with torch.no_grad():
        for width in (*WIDTHS, 12):
            ctx = context(width)
            ours_k, ours_v = apply_hypernetworks(ctx, [hn])
            their_k, their_v = a1111_apply([theirs], ctx)
            assert torch.allclose(ours_k, their_k, atol=1e-6) and torch.allclose(ours_v, their_v, atol=1e-6)
    if not release:
        # Training: multiplier 1 and the same Dropout layers, so the same masks from the same seed.
        hn.train()
        theirs.train()
        with torch.no_grad():
            torch.manual_seed(5)
            ours_k, _ = apply_hypernetworks(context(8), [hn])
            torch.manual_seed(5)
            their_k, _ = a1111_apply([theirs], context(8))
        assert torch.allclose(ours_k, their_k, atol=1e-6)


def test_a1111_optimizer_order_and_sidecar(tmp_path):
    hn = make(**DROPOUT_KW)
    optimizer = _trained(hn)
    pt = tmp_path / "net.pt"
    digest = save_pt(hn, pt)
    save_optimizer(pt, optimizer, digest)
    theirs = a1111_load(pt)
    ours = hn.parameters_in_a1111_order()
    assert len(theirs.weights()) == len(ours)
    assert all(torch.equal(a, b) for a, b in zip(theirs.weights(), ours, strict=True))
    sidecar = a1111_torch_load(str(pt) + ".optim")
    assert sidecar["hash"] == a1111_optimizer_hash(pt)  # A1111 keeps the state only then
    assert sidecar["optimizer_name"] == "AdamW"
    resumed = torch.optim.AdamW(theirs.weights(), lr=1e-3)
    resumed.load_state_dict(sidecar["optimizer_state_dict"])
    for index, state in optimizer.state_dict()["state"].items():
        assert torch.equal(resumed.state_dict()["state"][index]["exp_avg_sq"], state["exp_avg_sq"])


def test_a1111_safe_loader_refuses_what_it_should(tmp_path):
    hn = make()
    save_pt(hn, tmp_path / "net.pt")
    a1111_check_pt(tmp_path / "net.pt")  # ours passes
    raw = torch.load(tmp_path / "net.pt", weights_only=True)
    torch.save(raw, tmp_path / "plain.pt")  # torch's own zip has byteorder, .format_version, ...
    with pytest.raises(A1111Refused, match="bad file inside"):
        a1111_check_pt(tmp_path / "plain.pt")
    # Entry names pass, but a bool tensor pickles torch.BoolStorage, which is not on the list.
    save_torch_file({"mask": torch.ones(3, dtype=torch.bool)}, tmp_path / "bool.pt")
    with pytest.raises(A1111Refused, match="BoolStorage"):
        a1111_check_pt(tmp_path / "bool.pt")
    save_torch_file({"when": collections.Counter(a=1)}, tmp_path / "class.pt")
    with pytest.raises(A1111Refused, match="collections/Counter"):
        a1111_check_pt(tmp_path / "class.pt")
    # bfloat16 and float16 storages are allowed (A1111 loads such files and casts them).
    save_torch_file(
        {"w": torch.ones(2, dtype=torch.bfloat16), "h": torch.ones(2, dtype=torch.half)}, tmp_path / "b.pt"
    )
    a1111_check_pt(tmp_path / "b.pt")


def test_a1111_reads_the_legacy_format_like_us(tmp_path):
    generator = torch.Generator().manual_seed(0)
    legacy = {
        d: tuple(
            {
                "linear1.weight": torch.randn(2 * d, d, generator=generator),
                "linear1.bias": torch.randn(2 * d, generator=generator),
                "linear2.weight": torch.randn(d, 2 * d, generator=generator),
                "linear2.bias": torch.randn(d, generator=generator),
            }
            for _ in range(2)
        )
        for d in WIDTHS
    }
    path = tmp_path / "old.pt"
    save_torch_file(legacy, path)
    ours, theirs, comfy = load_pt(path), a1111_load(path), comfy_load(path, 1.0)
    assert comfy is not None
    with torch.no_grad():
        for width in WIDTHS:
            ctx = context(width)
            expected = apply_hypernetworks(ctx, [ours])
            for got in (a1111_apply([theirs], ctx), comfy_apply([comfy], ctx)):
                assert torch.allclose(expected[0], got[0], atol=1e-6)
                assert torch.allclose(expected[1], got[1], atol=1e-6)
    assert inspect_file(path)["loads_same_in_a1111_and_comfyui"] is True


# =================================================================================================
# ComfyUI
# =================================================================================================


@pytest.mark.parametrize("kwargs", OPTION_CASES)
def test_release_files_compute_the_same_in_comfyui(tmp_path, kwargs):
    hn = make(**kwargs)
    save_pt(hn, tmp_path / "net.pt", release=True)
    patch = comfy_load(tmp_path / "net.pt", 0.8)
    assert patch is not None
    assert not any(isinstance(m, nn.Dropout) for pair in patch.hypernet.values() for m in pair.modules())
    loaded = load_pt(tmp_path / "net.pt")
    loaded.strength = 0.8  # a runtime setting, not stored in the file
    with torch.no_grad():
        ours = apply_hypernetworks(context(), [loaded])
        theirs = comfy_apply([patch], context())
    same = all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours, theirs, strict=True))
    # The one combination where ComfyUI's "last layer" count differs from A1111's layout.
    mismatch = (
        hn.options.is_layer_norm and hn.options.activation_func != "linear" and not hn.options.activate_output
    )
    assert same == (not mismatch)
    assert same == inspect_file(tmp_path / "net.pt")["loads_same_in_a1111_and_comfyui"]
    assert any("ComfyUI" in warning for warning in hn.options.warnings()) == mismatch


def test_training_files_get_live_dropout_in_comfyui(tmp_path):
    hn = make(**DROPOUT_KW)
    save_pt(hn, tmp_path / "net.pt")
    patch = comfy_load(tmp_path / "net.pt", 1.0)
    assert patch is not None
    drops = [m for m in patch.hypernet[8][0].modules() if isinstance(m, nn.Dropout)]
    # ComfyUI's own placement (LayerNorm keys counted): after every LayerNorm, the output's too.
    assert len(drops) == 3 and all(m.training for m in drops)
    with torch.no_grad():
        torch.manual_seed(0)
        first, _ = comfy_apply([patch], context())
        second, _ = comfy_apply([patch], context())
    assert not torch.allclose(first, second)  # random at inference
    info = inspect_file(tmp_path / "net.pt")
    assert info["loads_same_in_a1111_and_comfyui"] is False
    assert any("Dropout" in reason for reason in info["reasons"])


def test_stacking_and_strengths_match_in_all_three(tmp_path):
    a = make("a", seed=1, activation_func="tanh")
    b = make("b", seed=2, layer_structure=(1, 1.5, 1), activation_func="relu", enable_sizes=(8, 12))
    save_pt(a, tmp_path / "a.pt", release=True)
    save_pt(b, tmp_path / "b.pt", release=True)
    a.strength, b.strength = 0.6, 1.4
    ta, tb = a1111_load(tmp_path / "a.pt"), a1111_load(tmp_path / "b.pt")
    ta.set_multiplier(0.6)
    tb.set_multiplier(1.4)
    pa, pb = comfy_load(tmp_path / "a.pt", 0.6), comfy_load(tmp_path / "b.pt", 1.4)
    assert pa is not None and pb is not None
    with torch.no_grad():
        for width in (8, 12, 16):
            ctx = context(width)
            ours = apply_hypernetworks(ctx, [a, b])
            for theirs in (a1111_apply([ta, tb], ctx), comfy_apply([pa, pb], ctx)):
                assert torch.allclose(ours[0], theirs[0], atol=1e-5)
                assert torch.allclose(ours[1], theirs[1], atol=1e-5)


# =================================================================================================
# inspect's verdict on hand-edited and old A1111 files agrees with the two programs
# =================================================================================================


def _actually_same(path: Path) -> bool:
    """Both replicas load the file, ComfyUI builds no (live) Dropout, and the outputs agree."""
    try:
        theirs = a1111_load(path)
    except (A1111Refused, RuntimeError, AssertionError):
        return False
    patch = comfy_load(path, 0.9)
    if patch is None:
        return False
    if any(isinstance(m, nn.Dropout) for pair in patch.hypernet.values() for m in pair.modules()):
        return False
    theirs.set_multiplier(0.9)
    with torch.no_grad():
        for width in theirs.layers:
            a = a1111_apply([theirs], context(width))
            c = comfy_apply([patch], context(width))
            if not all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a, c, strict=True)):
                return False
    return True


def _edited(tmp_path: Path, kwargs: dict[str, Any], changes: dict[str, Any], drop: tuple[str, ...]) -> Path:
    hn = make(**kwargs)
    save_pt(hn, tmp_path / "src.pt")  # training layout: the same as release unless kwargs ask for dropout
    raw = torch.load(tmp_path / "src.pt", weights_only=True)
    for key in drop:
        del raw[key]
    raw.update(changes)
    path = tmp_path / "edited.pt"
    save_torch_file(raw, path)
    return path


@pytest.mark.parametrize(
    ("kwargs", "changes", "drop", "same"),
    [
        # A1111 writes use_dropout from its checkbox even when the structure it saved is all zeros:
        # ComfyUI then builds Dropout from the flag alone (live, since it never calls eval()).
        ({"layer_structure": (1, 2, 2, 1)}, {"use_dropout": True}, (), False),
        ({"is_layer_norm": True}, {"use_dropout": True}, (), False),
        ({}, {"use_dropout": True}, (), True),  # [1,2,1]: ComfyUI's rule places none
        # A structure with dropout but use_dropout false: ComfyUI builds none, A1111's is off in eval.
        ({"use_dropout": True, "last_layer_dropout": True}, {"use_dropout": False}, (), True),
        # activation_func None: A1111 reads linear, ComfyUI refuses the file.
        ({}, {"activation_func": None}, (), False),
        # Both programs look names up exactly.
        ({"activation_func": "relu"}, {"activation_func": "ReLU"}, (), False),
        # activate_output missing: A1111 defaults to true, ComfyUI to false ...
        ({"activation_func": "relu", "activate_output": True}, {}, ("activate_output",), False),
        # ... but with layer norm ComfyUI applies the output activation anyway: the same function.
        (
            {"activation_func": "relu", "is_layer_norm": True, "activate_output": True},
            {},
            ("activate_output",),
            True,
        ),
        ({"activation_func": "relu", "is_layer_norm": True}, {}, (), False),
        ({"activation_func": "tanh", "activate_output": True}, {}, (), True),
    ],
)
def test_inspect_verdict_agrees_with_the_programs(tmp_path, kwargs, changes, drop, same):
    path = _edited(tmp_path, kwargs, changes, drop)
    assert _actually_same(path) is same
    info = inspect_file(path)
    assert info["loads_same_in_a1111_and_comfyui"] is same, info["reasons"]
    assert (info["reasons"] == []) is same


@pytest.mark.parametrize("kwargs", OPTION_CASES)
@pytest.mark.parametrize("release", [False, True])
def test_comfyui_layer_kinds_is_comfyuis_rule(tmp_path, kwargs, release):
    hn = make(**kwargs)
    save_pt(hn, tmp_path / "net.pt", release=release)
    patch = comfy_load(tmp_path / "net.pt", 1.0)
    assert patch is not None
    names = {nn.Linear: "linear", nn.LayerNorm: "layer_norm", nn.Dropout: "dropout"}
    k_module = patch.hypernet[8][0]
    assert isinstance(k_module, nn.Sequential)
    built = [names.get(type(m), "activation") for m in k_module]
    assert comfyui_layer_kinds(read_pt(tmp_path / "net.pt")) == built
