"""Checkpoints in ``<run>/hypernetworks/``: ``<name>-<step>.pt``, its ``.pt.optim`` and ``.pt.state``.

The ``.pt`` is an A1111 file holding exactly ``step`` optimizer steps. The ``.pt.state`` sidecar
holds what the ``.pt`` cannot: sampler position, every RNG state, the grad scaler, and (when no
``.optim`` is kept) the optimizer state, so a run can resume bit-identically. It is written
last, so a checkpoint with a ``.pt.state`` is complete; all three files are written atomically.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.errors import FileFormatError, TrainingError
from core.hypernetwork.fileformat import (
    load_optimizer_state,
    load_pt,
    save_optimizer,
    save_pt,
    torch_load_checked,
)
from core.hypernetwork.fileformat_zip import save_torch_file, sha256_file
from core.hypernetwork.module import Hypernetwork

STATE_FORMAT = "hyperforge.train_state"
STATE_VERSION = 1
STATE_SUFFIX = ".state"
CHECKPOINT_DIR = "hypernetworks"


@dataclass(frozen=True)
class SavedCheckpoint:
    """Paths and hash of one written checkpoint."""

    step: int
    path: Path
    optimizer_path: Path | None
    state_path: Path
    sha256: str


def checkpoint_path(run_dir: Path, name: str, step: int) -> Path:
    """``<run>/hypernetworks/<name>-<step>.pt``."""
    return run_dir / CHECKPOINT_DIR / f"{name}-{step}.pt"


def check_finite(hn: Hypernetwork) -> None:
    """Refuse to write a network with NaN or infinite weights (a corrupt checkpoint)."""
    for pname, param in hn.named_parameters():
        if not torch.isfinite(param).all():
            raise TrainingError(f"parameter {pname} is not finite; nothing was saved", code="non_finite_loss")


def save_checkpoint(
    run_dir: Path,
    hn: Hypernetwork,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    *,
    save_optimizer_state: bool,
) -> SavedCheckpoint:
    """Write ``.pt`` (+ ``.pt.optim``) + ``.pt.state`` for ``hn.step``; ``state`` comes from the trainer."""
    check_finite(hn)
    path = checkpoint_path(run_dir, hn.name, hn.step)
    path.parent.mkdir(parents=True, exist_ok=True)
    sha = save_pt(hn, path)
    optimizer_path = None
    if save_optimizer_state:
        save_optimizer(path, optimizer, sha)
        optimizer_path = Path(str(path) + ".optim")
    document = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "step": hn.step,
        "pt_sha256": sha,
        # Without a sidecar the optimizer state still has to survive for an exact resume.
        "optimizer_state_dict": None if save_optimizer_state else optimizer.state_dict(),
        **state,
    }
    state_path = Path(str(path) + STATE_SUFFIX)
    save_torch_file(document, state_path)
    return SavedCheckpoint(hn.step, path, optimizer_path, state_path, sha)


_STEP_RE = re.compile(r"^(?P<name>.+)-(?P<step>\d+)\.pt\.state$")


def latest_checkpoint(run_dir: Path, name: str) -> Path | None:
    """The ``.pt`` of the highest-step complete checkpoint of ``name`` in a run directory."""
    found: list[tuple[int, Path]] = []
    for state in (run_dir / CHECKPOINT_DIR).glob(f"*{STATE_SUFFIX}"):
        match = _STEP_RE.match(state.name)
        if match and match["name"] == name:
            pt = state.with_name(state.name.removesuffix(STATE_SUFFIX))
            if pt.is_file():
                found.append((int(match["step"]), pt))
    return max(found)[1] if found else None


@dataclass(frozen=True)
class ResumePoint:
    """What a resumed run restores: weights, optimizer state and the loop's state."""

    hypernetwork: Hypernetwork
    optimizer_state: dict[str, Any] | None
    state: dict[str, Any]


def load_checkpoint(pt_path: Path, optimizer_name: str) -> ResumePoint:
    """Load a complete checkpoint written by ``save_checkpoint``."""
    state = torch_load_checked(Path(str(pt_path) + STATE_SUFFIX))
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise FileFormatError(f"{pt_path}{STATE_SUFFIX}: not a {STATE_FORMAT} file")
    if state.get("version") != STATE_VERSION:
        raise FileFormatError(f"{pt_path}{STATE_SUFFIX}: unsupported version {state.get('version')!r}")
    if sha256_file(pt_path) != state["pt_sha256"]:
        raise FileFormatError(f"{pt_path}: changed since its state was written; cannot resume exactly")
    hn = load_pt(pt_path)
    optimizer_state = state["optimizer_state_dict"] or load_optimizer_state(pt_path, optimizer_name)
    if optimizer_state is None:
        raise FileFormatError(f"{pt_path}: its optimizer state is missing or stale; cannot resume exactly")
    return ResumePoint(hn, optimizer_state, state)
