"""Start, continue and resume runs from paths: what ``hyperforge train`` and the worker call.

``start_run`` trains a new hypernetwork (or continues an A1111 ``.pt``) into a run directory;
``resume_run`` picks a stopped run up at its last complete checkpoint, bit-identically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from core.data.dataset import DatasetOptions, TrainingDataset
from core.errors import InvalidOptionError
from core.hypernetwork.fileformat import load_any, load_optimizer_state
from core.hypernetwork.module import Hypernetwork
from core.models.loading import BaseModel, load_base_model
from core.spec import DEFAULT_ENABLE_SIZES, TrainingSpec, parse_spec, resolve_spec, spec_to_dict
from core.training.callbacks import Callback, EndEvent
from core.training.checkpointing import latest_checkpoint, load_checkpoint
from core.training.config import TrainerConfig, resolve_checkpointing, resolve_precision
from core.training.outputs import read_training_config, write_training_config
from core.training.trainer import Trainer

CONFIG_NAME = "training_config.json"


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def attention_widths(unet: Any) -> tuple[int, ...]:
    """Context widths the UNet's attention layers see: text widths first, then self-attention widths."""
    cross: set[int] = set()
    own: set[int] = set()
    for module in unet.modules():
        if hasattr(module, "is_cross_attention") and hasattr(module, "cross_attention_dim"):
            (cross if module.is_cross_attention else own).add(int(module.cross_attention_dim))
    return (*sorted(cross), *sorted(own - cross))


def default_sizes(model: BaseModel) -> tuple[int, ...]:
    """The arch's default widths when they are this model's, else the model's own (tiny models)."""
    widths = attention_widths(model.unet)
    table = DEFAULT_ENABLE_SIZES[model.arch]
    return table if set(table) == set(widths) else widths


def _check_widths(hn: Hypernetwork, model: BaseModel) -> None:
    """Refuse a network none of whose widths this UNet's attention sees: it would train nothing."""
    widths = attention_widths(model.unet)
    if not set(hn.widths()) & set(widths):
        raise InvalidOptionError(
            f"the hypernetwork's widths {list(hn.widths())} match none of this model's attention widths "
            f"{list(widths)}",
            option="enable_sizes",
        )


def dataset_digest(dataset: TrainingDataset) -> str:
    """sha256 over every accepted image's name, content hash and caption (order-independent)."""
    h = hashlib.sha256()
    for item in sorted(dataset.items, key=lambda it: (it.name, it.member or "")):
        h.update(f"{item.name}\0{item.info.sha256}\0{item.caption}\n".encode())
    return h.hexdigest()


def _dataset(path: Path, spec: TrainingSpec, model: BaseModel) -> TrainingDataset:
    t = spec.training
    options = DatasetOptions(
        width=t.width,
        height=t.height,
        bucketing=t.bucketing or t.varsize,  # varsize is done with buckets: same sizes per batch
        flip=t.flip,
        use_weight=t.use_weight,
        latent_factor=model.vae_scale_factor,
    )
    return TrainingDataset.from_path(path, options)


def _with(spec: TrainingSpec, **training: Any) -> TrainingSpec:
    return dataclasses.replace(spec, training=dataclasses.replace(spec.training, **training))


def _config(spec: TrainingSpec, run_dir: Path, model: BaseModel, device: torch.device) -> TrainerConfig:
    t = spec.training
    precision = resolve_precision(t.mixed_precision, device)
    checkpointing = resolve_checkpointing(
        t.gradient_checkpointing, device, model.arch, t.batch_size, t.width, t.height
    )
    return TrainerConfig(spec, run_dir, device, precision, checkpointing)


def _write_config(
    cfg: TrainerConfig, model: BaseModel, dataset: TrainingDataset, inputs: dict[str, Any]
) -> None:
    write_training_config(
        cfg.run_dir / CONFIG_NAME,
        spec_to_dict(cfg.spec),
        runtime={
            "device": str(cfg.device),
            "mixed_precision": cfg.precision.name,
            "gradient_checkpointing": cfg.gradient_checkpointing,
        },
        base_model={
            "name": model.name,
            "sha256_short": model.sha256_short,
            "arch": model.arch,
            "prediction_type": model.prediction_type,
        },
        dataset={"digest": dataset_digest(dataset), "samples": len(dataset), "images": len(dataset.items)},
        inputs=inputs,
    )


def start_run(
    spec: TrainingSpec,
    model_path: Path,
    data_path: Path,
    run_dir: Path,
    *,
    init_from: Path | None = None,
    callbacks: Sequence[Callback] = (),
    device: torch.device | None = None,
) -> EndEvent:
    """Train ``spec`` into ``run_dir``: a new network, or one continued from an A1111 file."""
    device = device or default_device()
    model = load_base_model(model_path)
    optimizer_state = None
    hn: Hypernetwork | None = None
    if init_from is not None:
        hn = load_any(init_from)
        # The file fixes the architecture; the spec is rewritten to say so.
        data = spec_to_dict(spec)
        meta = hn.options.as_metadata()
        data["hypernetwork"] = {k: meta[k] for k in data["hypernetwork"]}
        spec = parse_spec(data)
        if hn.step >= spec.training.steps:
            raise InvalidOptionError(
                f"{init_from} already has {hn.step} steps; set steps above that to train it further",
                option="steps",
            )
        optimizer_state = load_optimizer_state(init_from, spec.training.optimizer)  # None: start afresh
        hn.name = spec.name
    spec = resolve_spec(spec, model.arch, default_sizes(model))
    if spec.training.seed is None:
        spec = _with(spec, seed=secrets.randbelow(2**31))  # recorded, so the run can be repeated
    if hn is None:
        hn = Hypernetwork.new(spec.name, spec.hypernetwork.options(), seed=spec.training.seed)
    _check_widths(hn, model)
    hn.sd_checkpoint, hn.sd_checkpoint_name = model.sha256_short, model.name
    dataset = _dataset(data_path, spec, model)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = _config(spec, run_dir, model, device)
    inputs = {
        "model": str(model_path),
        "data": str(data_path),
        "init_from": str(init_from) if init_from else None,
    }
    _write_config(cfg, model, dataset, inputs)
    trainer = Trainer(cfg, model, dataset, hn, callbacks, optimizer_state=optimizer_state)
    return trainer.run()


def resume_run(
    run_dir: Path,
    *,
    steps: int | None = None,
    model_path: Path | None = None,
    data_path: Path | None = None,
    callbacks: Sequence[Callback] = (),
    device: torch.device | None = None,
) -> EndEvent:
    """Continue a stopped run at its last complete checkpoint (``steps`` may extend it)."""
    document = read_training_config(run_dir / CONFIG_NAME)
    spec = parse_spec(document["spec"])
    if steps is not None:
        spec = _with(spec, steps=steps)
    pt = latest_checkpoint(run_dir, spec.name)
    if pt is None:
        raise InvalidOptionError(f"{run_dir} has no complete checkpoint to resume from", option="resume")
    point = load_checkpoint(pt, spec.training.optimizer)
    inputs = document.get("inputs", {})
    model_path = model_path or Path(inputs["model"])
    data_path = data_path or Path(inputs["data"])
    device = device or default_device()
    model = load_base_model(model_path)
    if model.sha256_short != document["base_model"]["sha256_short"]:
        raise InvalidOptionError(f"{model_path} is not the base model this run started with", option="model")
    dataset = _dataset(data_path, spec, model)
    if dataset_digest(dataset) != document["dataset"]["digest"]:
        raise InvalidOptionError(f"{data_path} is not the dataset this run started with", option="data")
    hn = point.hypernetwork
    hn.name = spec.name
    hn.sd_checkpoint, hn.sd_checkpoint_name = model.sha256_short, model.name
    cfg = _config(spec, run_dir, model, device)
    _write_config(cfg, model, dataset, {**inputs, "resumed_from_step": hn.step})
    return Trainer(cfg, model, dataset, hn, callbacks, resume=point).run()
