"""The training loop: a small object in the manner of minGPT's Trainer, observed through callbacks.

Per optimizer step: ``gradient_accumulation_steps`` micro-batches of cached latents and text
conditioning, each noised at random timesteps and pushed through the frozen UNet with the
hypernetwork attached; the loss's gradient reaches only the hypernetwork. Every random draw
comes from generators whose state a checkpoint stores, so a resumed run is bit-identical.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from core.data.captions import fill_template
from core.data.dataset import TrainingDataset
from core.data.templates import resolve_template
from core.errors import TrainingError
from core.hypernetwork.module import Hypernetwork
from core.inject import attach
from core.models.loading import BaseModel
from core.training import diffusion
from core.training.callbacks import Callback, CallbackList, CheckpointEvent, EndEvent, ErrorEvent, StepEvent
from core.training.checkpointing import ResumePoint, save_checkpoint
from core.training.config import TrainerConfig, make_optimizer, steps_per_epoch
from core.training.latents import MAX_CACHED_PROMPTS, TextCache, all_prompts, encode_latents
from core.training.outputs import LossLog, LossRow, draw_loss_png
from core.training.previews import Previews
from core.training.rng import capture_rng, restore_rng
from core.training.schedule import Schedule

_LATENT_SEED_OFFSET = 0x5EED  # caching draws from its own stream so resume re-creates it exactly


class Trainer:
    """Trains one hypernetwork on one base model and dataset; ``run()`` returns the end event."""

    def __init__(
        self,
        config: TrainerConfig,
        model: BaseModel,
        dataset: TrainingDataset,
        hypernetwork: Hypernetwork,
        callbacks: Sequence[Callback] = (),
        *,
        resume: ResumePoint | None = None,
        optimizer_state: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.spec = config.spec
        self.model = model
        # diffusers' classes are opaque to mypy (its lazy imports); we use them as nn.Modules.
        self.unet: Any = model.unet
        self.vae: Any = model.vae
        self.encoders: list[Any] = [e for e in (model.text_encoder, model.text_encoder_2) if e is not None]
        self.dataset = dataset
        self.hn = hypernetwork
        self.callbacks = CallbackList(list(callbacks))
        self.resume = resume
        self.optimizer_state = resume.optimizer_state if resume else optimizer_state
        self.step = hypernetwork.step
        t = self.spec.training
        self.lr_schedule = Schedule.parse(t.learn_rate, t.steps)
        self.clip_schedule = Schedule.parse(t.clip_grad_value, t.steps, option="clip_grad_value")
        self.template = resolve_template(t.template)
        assert t.seed is not None, "resolve the seed before building a Trainer"
        self.noise_gen = torch.Generator().manual_seed(t.seed)
        self.text_rng = random.Random(t.seed)
        self.last_saved: int | None = None

    def run(self) -> EndEvent:
        """Train until the schedule ends or a callback asks to stop; report errors to callbacks."""
        try:
            return self._run()
        except BaseException as exc:
            self.callbacks.error(ErrorEvent(self.step, exc))
            raise

    # -- preparation -------------------------------------------------------------------------
    def _prepare(self) -> None:
        cfg, t, model, device = self.config, self.spec.training, self.model, self.config.device
        assert t.seed is not None
        if self.resume is None:
            torch.manual_seed(t.seed)
            np.random.seed(t.seed % 2**32)
            random.seed(t.seed)
        # Caches first, with the VAE and text encoder on the device; then they leave it.
        self.vae.to(device)
        latent_gen = torch.Generator().manual_seed(t.seed ^ _LATENT_SEED_OFFSET)
        self.latents = encode_latents(model, self.dataset, t.latent_sampling_method, latent_gen, device)
        self.vae.to("cpu")
        self._move_text_encoders(device)
        self.text = TextCache(model, device, cfg.precision.weight_dtype)
        prompts = all_prompts(self.dataset.captions, self.template, self.hn.name)
        self.text_per_step = t.shuffle_tags or t.tag_drop_out > 0 or len(prompts) > MAX_CACHED_PROMPTS
        if not self.text_per_step:
            self.text.precompute(prompts)
            self._move_text_encoders(torch.device("cpu"))  # kept on the device only if encoding per step
        self.unet.to(device, cfg.precision.weight_dtype)
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        else:
            self.unet.disable_gradient_checkpointing()
        self.hn.to(device=device, dtype=torch.float32).train()
        self.params = self.hn.parameters_in_a1111_order()
        self.optimizer = make_optimizer(t.optimizer, self.params, self.lr_schedule.segments[0].value)
        if self.optimizer_state is not None:
            self.optimizer.load_state_dict(self.optimizer_state)
        self.scaler = torch.amp.GradScaler(device.type) if cfg.precision.use_scaler else None
        self.sampler = self.dataset.sampler(t.batch_size, seed=t.seed)
        self.steps_per_epoch = steps_per_epoch(len(self.dataset), t)
        scheduler: Any = model.noise_scheduler
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device)  # [T], fp32
        self.num_timesteps = int(scheduler.config.num_train_timesteps)
        resume_step = self.step if self.resume is not None else None
        self.loss_log = LossLog(cfg.run_dir / "loss.csv", resume_step)
        self.previews = Previews(cfg.run_dir, model, self.hn, self.spec, self._first_prompt(), device)
        if self.resume is not None:
            st = self.resume.state
            self.sampler.load_state_dict(st["sampler"])
            if self.scaler is not None and st.get("scaler"):
                self.scaler.load_state_dict(st["scaler"])
            restore_rng(st["rng"], {"noise": self.noise_gen}, {"text": self.text_rng})
            self.last_saved = self.step

    def _move_text_encoders(self, device: torch.device) -> None:
        for encoder in self.encoders:
            encoder.to(device)

    def _first_prompt(self) -> str:
        return fill_template(self.template.lines[0], self.dataset.captions[0], self.hn.name)

    # -- the loop ------------------------------------------------------------------------------
    def _batches(self) -> Iterator[list[int]]:
        while True:  # one sampler pass per epoch; the sampler's state says where we are
            yield from self.sampler

    def _run(self) -> EndEvent:
        self._prepare()
        control = self.callbacks.control
        batches = self._batches()
        attachment = attach(self.unet, [self.hn])
        try:
            while (lr := self.lr_schedule.value_at(self.step)) is not None:
                started = time.perf_counter()
                loss = self._optimizer_step(lr, batches)
                self.step += 1
                self.hn.step = self.step
                epoch, epoch_step = divmod(self.step - 1, self.steps_per_epoch)
                self.loss_log.append(LossRow(self.step, epoch, epoch_step, loss, lr))
                seconds = time.perf_counter() - started
                end = self.lr_schedule.end_step
                self.callbacks.step(StepEvent(self.step, end, epoch, epoch_step, loss, lr, seconds))
                every = self.spec.checkpoints.save_every
                if (every and self.step % every == 0) or control.save_requested or control.stop_requested:
                    control.save_requested = False
                    self._checkpoint()
                if self.spec.samples.every and self.step % self.spec.samples.every == 0:
                    attachment.detach()  # sampling attaches the network itself, at each strength
                    self.callbacks.sample(self.previews.grid(self.step))
                    attachment.reattach()
                if control.stop_requested:
                    break
        finally:
            attachment.detach()
        stopped = control.stop_requested
        if self.last_saved != self.step:
            self._checkpoint()
        final = self.previews.release(self.step)
        if not stopped:
            self.callbacks.sample(self.previews.comparison())
        event = EndEvent(self.step, stopped, control.stop_reason, final, self.config.run_dir)
        self.callbacks.end(event)
        return event

    def _optimizer_step(self, lr: float, batches: Iterator[list[int]]) -> float:
        """One optimizer step over the accumulated micro-batches; returns their mean loss."""
        t = self.spec.training
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        accum = t.gradient_accumulation_steps
        total = torch.zeros((), device=self.config.device)
        for _ in range(accum):
            loss = self._micro_step(next(batches))
            scaled = loss / accum
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total += loss.detach()
        value = float(total.item()) / accum
        if not np.isfinite(value):
            # Stop before the optimizer touches the weights: the last checkpoint stays the good one.
            raise TrainingError(
                f"the loss became {value} at step {self.step + 1}; lower the learning rate or use fp32/bf16",
                code="non_finite_loss",
            )
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip real gradients, not scaled ones (A1111's bug)
        clip = self.clip_schedule.clip_value_at(self.step)
        if t.clip_grad_mode == "value":
            torch.nn.utils.clip_grad_value_(self.params, clip)
        elif t.clip_grad_mode == "norm":
            torch.nn.utils.clip_grad_norm_(self.params, clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return value

    def _micro_step(self, indices: list[int]) -> torch.Tensor:
        """Loss of one micro-batch (graph kept for backward)."""
        t, cfg, model = self.spec.training, self.config, self.model
        latents, weights = self.latents.batch(indices, self.noise_gen)  # [B, C, h, w] on CPU
        captions = self.dataset.captions
        prompts = [
            self.template.render(
                captions[i],
                self.hn.name,
                self.text_rng,
                shuffle_tags=t.shuffle_tags,
                tag_drop_out=t.tag_drop_out,
            )
            for i in indices
        ]
        cond = self.text.get(prompts)
        draw = diffusion.draw_noise(tuple(latents.shape), self.num_timesteps, self.noise_gen, t.noise_offset)
        device = cfg.device
        latents, noise, steps = latents.to(device), draw.noise.to(device), draw.timesteps.to(device)
        noisy = diffusion.add_noise(latents, noise, steps, self.alphas_cumprod)
        target = diffusion.target_for(model.prediction_type, latents, noise, steps, self.alphas_cumprod)
        scale = model.vae_scale_factor
        kwargs = model.unet_kwargs(cond, latents.shape[2] * scale, latents.shape[3] * scale)
        dtype = cfg.precision.autocast_dtype
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            pred = self.unet(noisy.to(cfg.precision.weight_dtype), steps, **kwargs).sample
        sample_weights = None
        if t.min_snr_gamma is not None:
            sample_weights = diffusion.min_snr_weights(
                steps, self.alphas_cumprod, t.min_snr_gamma, model.prediction_type
            )
        pixel_weights = weights.to(device) if weights is not None and t.use_weight else None
        return diffusion.denoising_loss(pred, target, pixel_weights, sample_weights)

    def _checkpoint(self) -> None:
        state = {
            "sampler": dict(self.sampler.state_dict()),
            "rng": capture_rng({"noise": self.noise_gen}, {"text": self.text_rng}),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "learn_rate": self.spec.training.learn_rate,
            "optimizer_name": self.spec.training.optimizer,
        }
        saved = save_checkpoint(
            self.config.run_dir,
            self.hn,
            self.optimizer,
            state,
            save_optimizer_state=self.spec.checkpoints.save_optimizer_state,
        )
        self.last_saved = self.step
        draw_loss_png(self.loss_log.rows, self.config.run_dir / "loss.png")
        self.callbacks.checkpoint(CheckpointEvent(saved.step, saved.path, saved.optimizer_path, saved.sha256))
