"""Runtime choices made from the spec and the device: precision, checkpointing, optimizer."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.errors import InvalidOptionError
from core.spec import OPTIMIZERS, TrainingSection, TrainingSpec

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# Activation memory kept for backward by a frozen UNet at 512x512, batch 1, half precision
# (bytes; measured order of magnitude for diffusers UNets with SDPA). Scales with pixels x batch.
_ACTIVATION_BYTES_512 = {"sd1": 3.0e9, "sd2": 3.0e9, "sdxl": 6.0e9}
_HEADROOM = 0.85  # leave room for the allocator's fragmentation and cuDNN workspaces


@dataclass(frozen=True)
class Precision:
    """How the UNet runs: the autocast dtype (None: plain fp32), its weight dtype, and the scaler."""

    name: str  # fp16 | bf16 | fp32
    autocast_dtype: torch.dtype | None
    weight_dtype: torch.dtype
    use_scaler: bool


@dataclass(frozen=True)
class TrainerConfig:
    """What the loop needs besides model, data and callbacks: a fully resolved spec and the runtime."""

    spec: TrainingSpec  # resolved: enable_sizes and seed are filled in
    run_dir: Path
    device: torch.device
    precision: Precision
    gradient_checkpointing: bool


def resolve_precision(choice: str, device: torch.device) -> Precision:
    """``auto`` is bf16 on CUDA when supported, else fp16 on CUDA, and fp32 on CPU."""
    if choice == "auto":
        if device.type == "cuda":
            choice = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            choice = "fp32"
    if choice not in _DTYPES:
        raise InvalidOptionError(f"unknown precision {choice!r}", option="mixed_precision")
    if choice == "fp16" and device.type != "cuda":
        raise InvalidOptionError(
            "fp16 needs a CUDA device; use bf16 or fp32 on CPU", option="mixed_precision"
        )
    if choice == "fp32":
        return Precision("fp32", None, torch.float32, use_scaler=False)
    # The UNet is frozen, so its weights can live in the half dtype; the hypernetwork keeps fp32
    # master weights and autocast runs its matmuls in the half dtype. Only fp16 needs loss scaling.
    return Precision(choice, _DTYPES[choice], _DTYPES[choice], use_scaler=choice == "fp16")


def resolve_checkpointing(
    choice: str, device: torch.device, arch: str, batch_size: int, width: int, height: int
) -> bool:
    """``auto`` turns gradient checkpointing on only when the activations would not fit the device."""
    if choice in ("true", "false"):
        return choice == "true"
    if device.type != "cuda":
        return False  # host memory is plentiful and checkpointing costs a second forward
    free, _total = torch.cuda.mem_get_info(device)
    need = _ACTIVATION_BYTES_512.get(arch, 6.0e9) * batch_size * width * height / (512 * 512)
    return need > free * _HEADROOM


def make_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Any ``torch.optim`` optimizer of ``core.spec.OPTIMIZERS`` with torch defaults and the given lr."""
    cls: Any = getattr(torch.optim, name, None) if name in OPTIMIZERS else None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise InvalidOptionError(
            f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}", option="optimizer"
        )
    factory: Any = cls  # the base class's __init__ signature does not declare lr
    params = list(params)
    extra: dict[str, Any] = {}
    # The fused kernels (AdamW, Adam, SGD, Adagrad on CPU and CUDA) do the whole update in one
    # pass: about 4x faster than the default foreach path on the 22M parameters of [1,2,1].
    if "fused" in inspect.signature(cls.__init__).parameters and all(
        p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params
    ):
        extra["fused"] = True
    optimizer: torch.optim.Optimizer = factory(params, lr=lr, **extra)
    return optimizer


def steps_per_epoch(dataset_len: int, training: TrainingSection) -> int:
    """Optimizer steps per pass over the data, as A1111 counts them (at least 1)."""
    return max(1, dataset_len // training.batch_size // training.gradient_accumulation_steps)
