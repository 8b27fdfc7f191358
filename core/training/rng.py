"""Capture and restore every random number generator a run touches, for bit-identical resume."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from core.errors import FileFormatError


def capture_rng(generators: dict[str, torch.Generator], rngs: dict[str, random.Random]) -> dict[str, Any]:
    """All RNG states as plain values and tensors (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state(legacy=False)
    assert isinstance(np_state, dict)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # numpy's MT19937 key is a uint32 array; stored as an int64 tensor (no numpy in the pickle)
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": _python_state(random.getstate()),
        "generators": {name: g.get_state() for name, g in generators.items()},
        "randoms": {name: _python_state(r.getstate()) for name, r in rngs.items()},
    }


def _python_state(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss_next = state
    return [int(version), [int(v) for v in internal], gauss_next]


def _python_tuple(state: list[Any]) -> tuple[Any, ...]:
    return (state[0], tuple(state[1]), state[2])


def restore_rng(
    state: dict[str, Any], generators: dict[str, torch.Generator], rngs: dict[str, random.Random]
) -> None:
    """Put every generator back where ``capture_rng`` saw it."""
    try:
        torch.set_rng_state(state["torch"])
        if torch.cuda.is_available() and state["cuda"]:
            torch.cuda.set_rng_state_all(state["cuda"])
        n = state["numpy"]
        key = n["key"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", key, n["pos"], n["has_gauss"], n["gauss"]))
        random.setstate(_python_tuple(state["python"]))
        for name, g in generators.items():
            g.set_state(state["generators"][name])
        for name, r in rngs.items():
            r.setstate(_python_tuple(state["randoms"][name]))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise FileFormatError(f"the saved random state cannot be restored: {exc}") from exc
