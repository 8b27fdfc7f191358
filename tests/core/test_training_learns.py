"""It learns: after a few hundred steps on the demo style, held-out denoising loss drops by 10% or more."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from core.cli import main
from core.data.dataset import DatasetOptions, TrainingDataset
from core.hypernetwork.fileformat import load_pt
from core.models.loading import load_base_model
from core.spec import parse_spec
from core.training.evaluate import heldout_loss
from core.training.run import start_run


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and the CI machine's two cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_heldout_denoising_loss_drops(
    tiny_sd1: Path, tmp_path: Path, record_property: pytest.RecordProperty, capsys: pytest.CaptureFixture[str]
) -> None:
    train_dir, held_dir = tmp_path / "train", tmp_path / "held"
    assert main(["make-demo-dataset", str(train_dir), "--count", "24", "--seed", "0"]) == 0
    assert (
        main(["make-demo-dataset", str(held_dir), "--count", "8", "--seed", "1"]) == 0
    )  # same style, unseen
    spec = parse_spec(
        {
            "name": "hatchwork",
            # A random tiny UNet needs a far higher rate than the 5e-6 real models use.
            "training": {
                "steps": 300,
                "width": 64,
                "height": 64,
                "learn_rate": "1e-3",
                "seed": 0,
                "template": "none",
            },
            "checkpoints": {"save_every": 0},
            "samples": {"every": 0},
        }
    )
    start_run(spec, tiny_sd1, train_dir, tmp_path / "run", device=torch.device("cpu"))

    model = load_base_model(tiny_sd1)
    held = TrainingDataset.from_path(held_dir, DatasetOptions(width=64, height=64))
    hn = load_pt(tmp_path / "run" / "hatchwork.pt")
    # Identical images, prompts, noise and timesteps; only the hypernetwork differs.
    base = heldout_loss(model, held, held.captions, [], seed=123)
    trained = heldout_loss(model, held, held.captions, [hn], seed=123)
    reduction = 1 - trained / base
    record_property("heldout_loss_reduction", reduction)
    with capsys.disabled():
        print(f"\nheld-out denoising loss: base {base:.4f}, trained {trained:.4f} ({reduction:.1%} lower)")
    assert reduction >= 0.10
