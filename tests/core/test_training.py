"""The training loop end to end on a tiny model: outputs, exact resume, continuing a .pt, refusals."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from core.cli import main
from core.data.demo import write_demo_dataset
from core.errors import InvalidOptionError, TrainingError
from core.hypernetwork.fileformat import load_pt, save_optimizer, save_pt, zip_entry_problems
from core.hypernetwork.module import Hypernetwork
from core.hypernetwork.options import HypernetworkOptions
from core.models.tiny import TINY_WIDTHS
from core.spec import TrainingSpec, parse_spec, resolve_spec
from core.training.callbacks import (
    Callback,
    CheckpointEvent,
    Control,
    EndEvent,
    ErrorEvent,
    SampleEvent,
    StepEvent,
)
from core.training.run import resume_run, start_run

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and the CI machine's two cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five 64x64 demo images: an odd count, so epochs end in the middle of steps."""
    directory = tmp_path_factory.mktemp("demo")
    write_demo_dataset(directory, count=5)
    return directory


def _spec(**training: Any) -> TrainingSpec:
    data: dict[str, Any] = {
        "name": "tiny",
        "training": {"steps": 4, "width": 64, "height": 64, "learn_rate": "1e-3", "seed": 7, **training},
        "checkpoints": {"save_every": 2},
        "samples": {"every": 0},
    }
    return parse_spec(data)


class Recorder(Callback):
    """Keeps every event; optionally asks to stop at a step."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.events: list[Any] = []
        self.stop_at = stop_at

    def on_step(self, event: StepEvent, control: Control) -> None:
        self.events.append(event)
        if event.step == self.stop_at:
            control.request_stop("test stop")

    def on_checkpoint(self, event: CheckpointEvent, control: Control) -> None:
        self.events.append(event)

    def on_sample(self, event: SampleEvent, control: Control) -> None:
        self.events.append(event)

    def on_end(self, event: EndEvent) -> None:
        self.events.append(event)

    def on_error(self, event: ErrorEvent) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    hn = load_pt(path)
    return {k: v.detach().clone() for k, v in hn.state_dict().items()}


def test_a_short_run_writes_every_output(tiny_sd1: Path, demo_data: Path, tmp_path: Path) -> None:
    spec = parse_spec(
        {
            "name": "tiny",
            "training": {"steps": 4, "width": 64, "height": 64, "learn_rate": "1e-3", "seed": 3},
            "checkpoints": {"save_every": 2},
            "samples": {
                "every": 2,
                "prompts": [{"prompt": "a red circle", "steps": 2, "width": 64, "height": 64}],
            },
        }
    )
    rec = Recorder()
    run = tmp_path / "run"
    end = start_run(spec, tiny_sd1, demo_data, run, callbacks=[rec], device=CPU)

    assert (end.step, end.stopped, end.final_path) == (4, False, run / "tiny.pt")
    for step in (2, 4):
        pt = run / "hypernetworks" / f"tiny-{step}.pt"
        assert load_pt(pt).step == step  # the file holds exactly the step in its name
        assert (run / "hypernetworks" / f"tiny-{step}.pt.optim").is_file()
        assert (run / "hypernetworks" / f"tiny-{step}.pt.state").is_file()
        assert zip_entry_problems(pt) == []
    release = load_pt(run / "tiny.pt")
    assert release.step == 4 and release.name == "tiny" and not release.options.use_dropout
    assert release.widths() == TINY_WIDTHS["sd1"]
    for grid in ("tiny-2.png", "tiny-4.png", "tiny-comparison.png"):
        with Image.open(run / "samples" / grid) as im:
            assert "a red circle" in im.text["parameters"]
    with (run / "loss.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert set(rows[0]) == {"step", "epoch", "epoch_step", "loss", "learn_rate"}
    assert all(float(r["learn_rate"]) == 1e-3 and float(r["loss"]) > 0 for r in rows)
    with Image.open(run / "loss.png") as im:
        assert im.format == "PNG"
    config = json.loads((run / "training_config.json").read_text())
    assert config["spec"]["training"]["seed"] == 3
    assert config["spec"]["hypernetwork"]["enable_sizes"] == list(TINY_WIDTHS["sd1"])
    assert len(config["dataset"]["digest"]) == 64 and config["dataset"]["images"] == 5
    assert len(config["base_model"]["sha256_short"]) == 10 and config["versions"]["torch"]
    assert config["runtime"] == {"device": "cpu", "mixed_precision": "fp32", "gradient_checkpointing": False}
    # events: 4 steps, 2 checkpoints, 2 periodic grids + the comparison, then the end
    assert [e.step for e in rec.of(StepEvent)] == [1, 2, 3, 4]
    assert [e.step for e in rec.of(CheckpointEvent)] == [2, 4]
    assert [e.step for e in rec.of(SampleEvent)] == [2, 4, None]
    assert rec.events[-1] == end


HARD = {
    # every source of randomness the loop has: random latents, tag shuffling and drop-out,
    # hypernetwork dropout (global RNG), batches that cross epoch boundaries, accumulation
    "latent_sampling_method": "random",
    "shuffle_tags": True,
    "tag_drop_out": 0.2,
    "batch_size": 2,
    "gradient_accumulation_steps": 2,
    "noise_offset": 0.05,
    "min_snr_gamma": 5.0,
    "clip_grad_mode": "norm",
    "clip_grad_value": "1.0",
    "steps": 6,
}


@pytest.mark.parametrize("save_optimizer_state", [True, False])
def test_resume_is_bit_identical(
    tiny_sd1: Path, demo_data: Path, tmp_path: Path, save_optimizer_state: bool
) -> None:
    data = {
        "name": "tiny",
        "hypernetwork": {"use_dropout": True, "layer_structure": [1, 2, 2, 1]},
        "training": {"width": 64, "height": 64, "learn_rate": "1e-3:4, 5e-4", "seed": 11, **HARD},
        "checkpoints": {"save_every": 0, "save_optimizer_state": save_optimizer_state},
        "samples": {"every": 0},
    }
    spec = parse_spec(data)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    start_run(spec, tiny_sd1, demo_data, whole, device=CPU)
    stopped = start_run(spec, tiny_sd1, demo_data, parts, callbacks=[Recorder(stop_at=3)], device=CPU)
    assert (stopped.step, stopped.stopped, stopped.reason) == (3, True, "test stop")
    end = resume_run(parts, device=CPU)
    assert end.step == 6 and not end.stopped

    a, b = _tensors(whole / "hypernetworks" / "tiny-6.pt"), _tensors(parts / "hypernetworks" / "tiny-6.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (whole / "loss.csv").read_text() == (parts / "loss.csv").read_text()
    # and the run did train: the weights moved away from the start
    start = _tensors(parts / "hypernetworks" / "tiny-3.pt")
    assert any(not torch.equal(a[k], start[k]) for k in a)


def test_resume_can_extend_a_finished_run(tiny_sd1: Path, demo_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    start_run(_spec(steps=2), tiny_sd1, demo_data, run, device=CPU)
    end = resume_run(run, steps=3, device=CPU)
    assert end.step == 3 and load_pt(run / "tiny.pt").step == 3


def _saved_network(path: Path, step: int, *, with_optim: bool) -> Path:
    options = HypernetworkOptions.create(enable_sizes=TINY_WIDTHS["sd1"], activation_func="relu")
    hn = Hypernetwork.new("old", options, seed=5)
    hn.step = step
    sha = save_pt(hn, path)
    if with_optim:
        opt = torch.optim.AdamW(hn.parameters_in_a1111_order(), lr=1e-3)
        for p in hn.parameters_in_a1111_order():
            p.grad = torch.ones_like(p)
        opt.step()  # a non-empty state: exp_avg etc.
        save_optimizer(path, opt, sha)
    return path


@pytest.mark.parametrize("with_optim", [True, False])
def test_continue_from_an_a1111_file(
    tiny_sd1: Path, demo_data: Path, tmp_path: Path, with_optim: bool
) -> None:
    pt = _saved_network(tmp_path / "old.pt", 2, with_optim=with_optim)
    spec = parse_spec(
        {
            **json.loads(json.dumps({"name": "cont"})),
            "training": {"steps": 4, "width": 64, "height": 64, "seed": 1},
            "checkpoints": {"save_every": 0},
            "samples": {"every": 0},
        }
    )
    run = tmp_path / "run"
    rec = Recorder()
    end = start_run(spec, tiny_sd1, demo_data, run, init_from=pt, callbacks=[rec], device=CPU)
    # the file's step counts: steps 3 and 4 are trained, as A1111 continues a file
    assert [e.step for e in rec.of(StepEvent)] == [3, 4] and end.step == 4
    out = load_pt(run / "cont.pt")
    assert out.options.activation_func == "relu" and out.name == "cont"
    config = json.loads((run / "training_config.json").read_text())
    assert config["spec"]["hypernetwork"]["activation_func"] == "relu"  # the file's options win
    old = _tensors(pt)
    new = {k: v for k, v in out.state_dict().items()}
    assert any(not torch.equal(old[k], new[k]) for k in old)


def test_continuing_a_file_that_is_already_done_is_refused(
    tiny_sd1: Path, demo_data: Path, tmp_path: Path
) -> None:
    pt = _saved_network(tmp_path / "old.pt", 10, with_optim=False)
    with pytest.raises(InvalidOptionError, match="already has 10 steps"):
        start_run(_spec(steps=10), tiny_sd1, demo_data, tmp_path / "run", init_from=pt, device=CPU)


def test_non_finite_loss_ends_the_run_without_a_corrupt_checkpoint(
    tiny_sd1: Path, demo_data: Path, tmp_path: Path
) -> None:
    # SGD at 1e30 pushes the weights to inf within a step or two; the loss follows.
    spec = _spec(steps=8, optimizer="SGD", learn_rate="1e30")
    spec = parse_spec({**_dict(spec), "checkpoints": {"save_every": 1}})
    rec = Recorder()
    with pytest.raises(TrainingError) as info:
        start_run(spec, tiny_sd1, demo_data, tmp_path / "run", callbacks=[rec], device=CPU)
    assert info.value.code == "non_finite_loss"
    assert rec.of(ErrorEvent) and rec.of(ErrorEvent)[0].error is info.value
    assert not (tmp_path / "run" / "tiny.pt").exists()
    for pt in (tmp_path / "run" / "hypernetworks").glob("*.pt"):
        assert all(torch.isfinite(t).all() for t in _tensors(pt).values()), pt


def _dict(spec: TrainingSpec) -> dict[str, Any]:
    from core.spec import spec_to_dict

    return spec_to_dict(spec)


def test_resume_refusals(tiny_sd1: Path, demo_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    start_run(_spec(steps=2), tiny_sd1, demo_data, run, device=CPU)
    other = tmp_path / "other"
    write_demo_dataset(other, count=3, seed=9)
    with pytest.raises(InvalidOptionError, match="not the dataset"):
        resume_run(run, steps=3, data_path=other, device=CPU)
    for state in (run / "hypernetworks").glob("*.state"):
        state.unlink()
    with pytest.raises(InvalidOptionError, match="no complete checkpoint"):
        resume_run(run, steps=3, device=CPU)


def test_cli_trains_with_a_spec_file_and_flag_overrides(
    tiny_sd1: Path, demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(
        json.dumps({"training": {"steps": 50, "width": 64, "height": 64, "learn_rate": "1e-3"}})
    )
    out = tmp_path / "run"
    args = ["train", "--model", str(tiny_sd1), "--data", str(demo_data), "--out", str(out), "--name", "cli"]
    code = main(
        [
            *args,
            "--spec",
            str(spec_file),
            "--steps",
            "2",
            "--save-every",
            "1",
            "--sample-every",
            "0",
            "--seed",
            "4",
        ]
    )
    assert code == 0
    assert "finished at step 2" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "hypernetworks").glob("*.pt")) == ["cli-1.pt", "cli-2.pt"]
    config = json.loads((out / "training_config.json").read_text())
    assert (config["spec"]["training"]["steps"], config["spec"]["training"]["seed"]) == (2, 4)
    assert config["spec"]["base_model"] == str(tiny_sd1)
    assert main(["train", "--resume", str(out), "--steps", "3"]) == 0
    assert load_pt(out / "cli.pt").step == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--model, --data, --out, --name required"),
        (["--model", "m", "--data", "d", "--out", "o", "--name", "a/b"], "/name"),
        (
            ["--model", "m", "--data", "d", "--out", "o", "--name", "x", "--learn-rate", "1e-5:x"],
            "/training/learn_rate",
        ),
        (["--model", "m", "--data", "d", "--out", "o", "--name", "x", "--steps", "0"], "/training/steps"),
        (["--resume", "r", "--learn-rate", "1e-5"], "--resume continues a run exactly"),
        (
            ["--model", "m", "--data", "d", "--out", "o", "--name", "x", "--spec", "missing.json"],
            "cannot read",
        ),
    ],
)
def test_cli_refusals(extra: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", *extra]) == 2
    assert message in capsys.readouterr().err


def test_widths_the_model_never_uses_are_refused(tiny_sd1: Path, demo_data: Path, tmp_path: Path) -> None:
    spec = parse_spec({**_dict(_spec()), "hypernetwork": {"enable_sizes": [768, 320, 640, 1280]}})
    with pytest.raises(InvalidOptionError, match="match none of this model's attention widths"):
        start_run(spec, tiny_sd1, demo_data, tmp_path / "run", device=CPU)


@pytest.mark.parametrize("arch", ["sd2", "sdxl"])
def test_v_prediction_and_sdxl_models_train(
    arch: str, request: pytest.FixtureRequest, demo_data: Path, tmp_path: Path
) -> None:
    model_dir: Path = request.getfixturevalue(f"tiny_{arch}")
    rec = Recorder()
    end = start_run(
        _spec(steps=2, min_snr_gamma=5.0), model_dir, demo_data, tmp_path / "run", callbacks=[rec], device=CPU
    )
    assert end.step == 2 and all(np.isfinite(e.loss) for e in rec.of(StepEvent))
    hn = load_pt(tmp_path / "run" / "tiny.pt")
    assert hn.widths() == TINY_WIDTHS[arch]
    config = json.loads((tmp_path / "run" / "training_config.json").read_text())
    assert config["base_model"]["prediction_type"] == ("v_prediction" if arch == "sd2" else "epsilon")


def test_gradient_checkpointing_trains_the_same(tiny_sd1: Path, demo_data: Path, tmp_path: Path) -> None:
    # SGD keeps weight differences proportional to gradient differences (Adam's first steps
    # are lr * sign(g), which turns rounding noise in near-zero gradients into full steps).
    ends, losses = {}, {}
    for choice in ("true", "false"):
        rec = Recorder()
        spec = _spec(steps=2, gradient_checkpointing=choice, optimizer="SGD", learn_rate="0.1")
        start_run(spec, tiny_sd1, demo_data, tmp_path / choice, callbacks=[rec], device=CPU)
        ends[choice] = _tensors(tmp_path / choice / "tiny.pt")
        losses[choice] = [e.loss for e in rec.of(StepEvent)]
        config = json.loads((tmp_path / choice / "training_config.json").read_text())
        assert config["runtime"]["gradient_checkpointing"] is (choice == "true")
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-5)
    assert all(torch.allclose(ends["true"][k], ends["false"][k], atol=1e-6, rtol=1e-4) for k in ends["true"])
    options = resolve_spec(_spec(), "sd1", TINY_WIDTHS["sd1"]).hypernetwork.options()
    initial = Hypernetwork.new("tiny", options, seed=7).state_dict()
    assert any((ends["true"][k] - initial[k]).abs().max() > 1e-4 for k in initial)  # it did train


def test_use_weight_applies_the_alpha_channel(tiny_sd1: Path, tmp_path: Path) -> None:
    data = tmp_path / "rgba"
    data.mkdir()
    for i in range(3):
        alpha = Image.linear_gradient("L").resize((64, 64))  # transparent top, opaque bottom
        image = Image.new("RGB", (64, 64), (40 * i, 120, 200))
        image.putalpha(alpha)
        image.save(data / f"{i}.png")
    losses = {}
    for use_weight in (False, True):
        rec = Recorder()
        start_run(
            _spec(steps=2, use_weight=use_weight),
            tiny_sd1,
            data,
            tmp_path / str(use_weight),
            callbacks=[rec],
            device=CPU,
        )
        losses[use_weight] = [e.loss for e in rec.of(StepEvent)]
    assert losses[True] != losses[False]
