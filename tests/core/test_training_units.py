"""The training loop's building blocks: objective maths, runtime choices, logs, callbacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from core.errors import InvalidOptionError
from core.training import diffusion
from core.training.callbacks import Callback, CallbackList, Control, StepEvent
from core.training.config import make_optimizer, resolve_checkpointing, resolve_precision
from core.training.outputs import LossLog, LossRow, draw_loss_png, read_loss_csv


def _alphas() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2  # SD's scaled-linear schedule
    return torch.cumprod(1 - betas, dim=0)


def test_noise_draw_is_reproducible_and_offset_is_per_channel() -> None:
    a = diffusion.draw_noise((2, 4, 8, 8), 1000, torch.Generator().manual_seed(1))
    b = diffusion.draw_noise((2, 4, 8, 8), 1000, torch.Generator().manual_seed(1))
    assert torch.equal(a.noise, b.noise) and torch.equal(a.timesteps, b.timesteps)
    assert a.timesteps.dtype == torch.int64 and int(a.timesteps.max()) < 1000
    off = diffusion.draw_noise((2, 4, 8, 8), 1000, torch.Generator().manual_seed(1), noise_offset=0.5)
    shift = off.noise - a.noise  # constant over h, w for each (sample, channel)
    assert not torch.allclose(shift, torch.zeros_like(shift))
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift))


def test_targets_epsilon_and_velocity() -> None:
    ac = _alphas()
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([0, 999])
    assert torch.equal(diffusion.target_for("epsilon", x0, eps, t, ac), eps)
    v = diffusion.target_for("v_prediction", x0, eps, t, ac)
    a = ac[t].reshape(-1, 1, 1, 1)
    assert torch.allclose(v, a.sqrt() * eps - (1 - a).sqrt() * x0)
    noisy = diffusion.add_noise(x0, eps, t, ac)
    # x0 = sqrt(a) x_t - sqrt(1 - a) v: the v-parameterisation recovers the clean latents
    assert torch.allclose(a.sqrt() * noisy - (1 - a).sqrt() * v, x0, atol=1e-5)
    with pytest.raises(InvalidOptionError):
        diffusion.target_for("sample", x0, eps, t, ac)


def test_min_snr_weights() -> None:
    ac = _alphas()
    t = torch.tensor([0, 500, 999])
    snr = ac[t] / (1 - ac[t])
    w = diffusion.min_snr_weights(t, ac, 5.0, "epsilon")
    assert torch.allclose(w, torch.clamp(snr, max=5.0) / snr)
    assert w[0] < 1 and w[2] == pytest.approx(1.0)  # low noise is down-weighted, high noise kept
    wv = diffusion.min_snr_weights(t, ac, 5.0, "v_prediction")
    assert torch.allclose(wv, torch.clamp(snr, max=5.0) / (snr + 1))


def test_denoising_loss_weights() -> None:
    pred, target = torch.zeros(2, 4, 2, 2), torch.ones(2, 4, 2, 2)
    assert diffusion.denoising_loss(pred, target).item() == 1.0
    pixel = torch.tensor([[[[2.0, 0.0], [2.0, 0.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])  # mean 1 each
    assert diffusion.denoising_loss(pred, target, pixel).item() == pytest.approx(1.0)
    sample = torch.tensor([0.0, 1.0])
    assert diffusion.denoising_loss(pred, target, None, sample).item() == pytest.approx(0.5)


def test_precision_and_checkpointing_choices_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu).name == "fp32"
    bf16 = resolve_precision("bf16", cpu)
    assert (bf16.autocast_dtype, bf16.use_scaler) == (torch.bfloat16, False)
    with pytest.raises(InvalidOptionError, match="CUDA"):
        resolve_precision("fp16", cpu)
    assert resolve_checkpointing("auto", cpu, "sd1", 1, 512, 512) is False
    assert resolve_checkpointing("true", cpu, "sd1", 1, 512, 512) is True


def test_optimizers_by_name() -> None:
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert isinstance(make_optimizer("AdamW", params, 1e-3), torch.optim.AdamW)
    assert make_optimizer("SGD", params, 0.5).param_groups[0]["lr"] == 0.5
    # the fused single-pass update where torch has one; torch defaults otherwise
    assert make_optimizer("AdamW", params, 1e-3).defaults["fused"] is True
    assert "fused" not in make_optimizer("RMSprop", params, 1e-3).defaults
    for bad in ("LBFGS", "adamw", "Optimizer", "nope"):
        with pytest.raises(InvalidOptionError, match="unknown optimizer"):
            make_optimizer(bad, params, 1e-3)


def test_loss_log_drops_rows_after_the_resume_step(tmp_path: Path) -> None:
    path = tmp_path / "loss.csv"
    log = LossLog(path)
    for step in range(1, 6):
        log.append(LossRow(step, 0, step - 1, 0.5 / step, 1e-5))
    assert path.read_text().splitlines()[0] == "step,epoch,epoch_step,loss,learn_rate"
    resumed = LossLog(path, resume_step=3)
    resumed.append(LossRow(4, 0, 3, 0.1, 1e-5))
    assert [r.step for r in read_loss_csv(path)] == [1, 2, 3, 4]
    assert read_loss_csv(path)[3].loss == pytest.approx(0.1)


def test_loss_png(tmp_path: Path) -> None:
    rows = [LossRow(s, 0, s - 1, 1.0 / s, 1e-5) for s in range(1, 40)]
    draw_loss_png(rows, tmp_path / "loss.png")
    draw_loss_png([], tmp_path / "empty.png")
    with Image.open(tmp_path / "loss.png") as im:
        assert im.size == (800, 400)
        # the curve is drawn: some pixels are the dark line colour
        assert (20, 60, 170) in {c for _, c in im.getcolors(100000) or []}


def test_callbacks_can_only_ask() -> None:
    seen: list[int] = []

    class StopAtTwo(Callback):
        def on_step(self, event: StepEvent, control: Control) -> None:
            seen.append(event.step)
            if event.step == 2:
                control.request_stop("enough")

    cbs = CallbackList([StopAtTwo(), Callback()])
    for step in (1, 2):
        cbs.step(StepEvent(step, 10, 0, step - 1, 0.1, 1e-5, 0.01))
    assert seen == [1, 2]
    assert cbs.control.stop_requested and cbs.control.stop_reason == "enough"
    with pytest.raises(AttributeError):
        StepEvent(1, 1, 0, 0, 0.1, 1e-5, 0.0).step = 3  # type: ignore[misc]


def test_latent_sampling_methods(tiny_sd1: Path, tmp_path: Path) -> None:
    from core.data.dataset import DatasetOptions, TrainingDataset
    from core.data.demo import write_demo_dataset
    from core.models.loading import load_base_model
    from core.training.latents import encode_latents

    write_demo_dataset(tmp_path, count=2)
    model = load_base_model(tiny_sd1)
    dataset = TrainingDataset.from_path(tmp_path, DatasetOptions(width=64, height=64, flip=True))
    cpu = torch.device("cpu")

    def cache(method: str):  # type: ignore[no-untyped-def]
        return encode_latents(model, dataset, method, torch.Generator().manual_seed(0), cpu)

    mean, once, rand = cache("deterministic"), cache("once"), cache("random")
    assert len(mean.means) == 4 and mean.means[0].shape == (4, 8, 8)  # 2 images + 2 mirrors, 64 px / 8
    assert not torch.equal(mean.means[0], mean.means[1])  # the mirror has its own latent
    assert torch.equal(cache("once").means[0], once.means[0]) and not torch.equal(
        once.means[0], mean.means[0]
    )
    gen = torch.Generator().manual_seed(1)
    first, _ = rand.batch([0], gen)
    second, _ = rand.batch([0], gen)
    assert not torch.equal(first, second)  # "random" draws anew each use
    assert torch.equal(mean.batch([0], gen)[0], mean.batch([0], gen)[0])
