"""The training spec (service-api.md, "Training spec") as frozen, validated dataclasses; torch-free.

One spec serves the HTTP API (body of ``POST /v1/jobs``), ``hyperforge train --spec`` and the
worker. Unknown fields are errors. Every field has a default except ``dataset_id`` and
``base_model``, which are optional here because the CLI passes paths instead (the API requires
them). Hypernetwork options are validated by ``HypernetworkOptions.create`` and schedule strings
by ``core.training.schedule``, so each rule has exactly one implementation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    JsonValue,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

from core.data.templates import resolve_template
from core.errors import InvalidOptionError
from core.hypernetwork.options import HypernetworkOptions
from core.training.schedule import Schedule, validate_schedule

_CONFIG = ConfigDict(extra="forbid")
Arch = Literal["sd1", "sd2", "sdxl"]
Sampler = Literal["euler_a", "euler", "dpm++_2m", "dpm++_2m_karras", "ddim"]

# Hypernetwork widths enabled when the spec gives none: the text width plus the UNet's
# self-attention widths of each architecture (format spec, section 1).
DEFAULT_ENABLE_SIZES: dict[str, tuple[int, ...]] = {
    "sd1": (768, 320, 640, 1280),
    "sd2": (1024, 320, 640, 1280),
    "sdxl": (640, 1280, 2048),
}
# torch.optim optimizers that work on dense parameters with a plain ``step()`` (LBFGS needs a
# closure, SparseAdam sparse gradients). The trainer checks the name against torch.optim again.
OPTIMIZERS: tuple[str, ...] = (
    "AdamW", "Adam", "Adamax", "NAdam", "RAdam", "Adagrad", "Adadelta", "Adafactor",
    "RMSprop", "Rprop", "SGD", "ASGD",
)  # fmt: skip
# Optimizer state kept per parameter, in parameter-sized fp32 tensors (for ``estimate``).
_OPTIMIZER_STATE_COPIES: dict[str, int] = {
    "AdamW": 2, "Adam": 2, "Adamax": 2, "NAdam": 2, "RAdam": 2, "Adagrad": 1, "Adadelta": 2,
    "Adafactor": 1, "RMSprop": 1, "Rprop": 2, "SGD": 1, "ASGD": 1,
}  # fmt: skip
_UNSAFE_NAME = re.compile(r'[\x00-\x1f\x7f/\\<>:"|?*]')
LR_WARNING_THRESHOLD = 1e-4
STEPS_WARNING_THRESHOLD = 50_000


def _custom(code: str, message: str, option: str | None = None) -> PydanticCustomError:
    """A pydantic error with our stable ``code``; ``option`` extends the pointer of a section check."""
    return PydanticCustomError(code, message, {"option": option} if option else None)


def _schedule(value: Any, option: str) -> str:
    """Normalise a schedule given as a number to its string form and check its syntax."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _custom(
            "invalid_type", "expected a number or a schedule string such as '5e-6' or '1e-5:1000, 1e-6'"
        )
    text = repr(float(value)) if isinstance(value, int | float) else value
    try:
        validate_schedule(text, option)
    except InvalidOptionError as exc:
        raise _custom("invalid_schedule", exc.message) from None
    return text


@dataclass(frozen=True, config=_CONFIG)
class HypernetworkSpec:
    """The hypernetwork's architecture, named as A1111 names it."""

    layer_structure: tuple[float, ...] = (1.0, 2.0, 1.0)
    activation_func: str = "relu"
    weight_initialization: str = "Normal"
    is_layer_norm: bool = False
    use_dropout: bool = False
    dropout_structure: tuple[float, ...] | None = None
    last_layer_dropout: bool = False
    activate_output: bool = False
    enable_sizes: tuple[int, ...] | None = None  # None: the architecture's defaults (resolve_spec)

    def options(self) -> HypernetworkOptions:
        """The validated ``HypernetworkOptions`` these fields describe."""
        kwargs: dict[str, Any] = {
            "layer_structure": list(self.layer_structure),
            "activation_func": self.activation_func,
            "weight_initialization": self.weight_initialization,
            "is_layer_norm": self.is_layer_norm,
            "use_dropout": self.use_dropout,
            "dropout_structure": None if self.dropout_structure is None else list(self.dropout_structure),
            "last_layer_dropout": self.last_layer_dropout,
            "activate_output": self.activate_output,
        }
        if self.enable_sizes is not None:
            kwargs["enable_sizes"] = list(self.enable_sizes)
        return HypernetworkOptions.create(**kwargs)

    @model_validator(mode="after")
    def _check(self) -> HypernetworkSpec:
        try:
            self.options()
        except InvalidOptionError as exc:
            raise _custom(exc.code, exc.message, exc.option) from None
        return self


@dataclass(frozen=True, config=_CONFIG)
class TrainingSection:
    """How to train: A1111's options plus a few of ours (optimizer, precision, noise tweaks, buckets)."""

    learn_rate: str = "5e-6"  # A1111 schedule "lr:step, ..., lr"; a number is kept as its string
    steps: int = Field(default=10_000, ge=1, le=10_000_000)
    batch_size: int = Field(default=1, ge=1, le=1024)
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=1024)
    width: int = Field(default=512, ge=64, le=4096, multiple_of=8)
    height: int = Field(default=512, ge=64, le=4096, multiple_of=8)
    varsize: bool = False
    clip_grad_mode: Literal["disabled", "value", "norm"] = "disabled"
    clip_grad_value: str = "0.1"  # same schedule syntax; holds its last value once the list ends
    shuffle_tags: bool = False
    tag_drop_out: float = Field(default=0.0, ge=0.0, lt=1.0)
    latent_sampling_method: Literal["once", "deterministic", "random"] = "deterministic"
    use_weight: bool = False
    template: str = Field(default="style_filewords", min_length=1, max_length=20_000)
    flip: bool = False
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    optimizer: str = "AdamW"
    mixed_precision: Literal["auto", "fp16", "bf16", "fp32"] = "auto"
    gradient_checkpointing: Literal["auto", "true", "false"] = "auto"
    noise_offset: float = Field(default=0.0, ge=0.0, le=1.0)
    min_snr_gamma: float | None = Field(default=None, gt=0.0, le=100.0)
    bucketing: bool = False

    @field_validator("learn_rate", "clip_grad_value", mode="before")
    @classmethod
    def _schedules(cls, value: Any, info: Any) -> str:
        return _schedule(value, info.field_name)

    @field_validator("gradient_checkpointing", mode="before")
    @classmethod
    def _bool_to_word(cls, value: Any) -> Any:
        # JSON users write true/false; we keep one spelling so the field has a single type.
        return ("true" if value else "false") if isinstance(value, bool) else value

    @field_validator("template")
    @classmethod
    def _known_template(cls, value: str) -> str:
        try:
            resolve_template(value)
        except InvalidOptionError as exc:
            raise _custom("invalid_template", exc.message) from None
        return value

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        if value not in OPTIMIZERS:
            raise _custom(
                "unknown_optimizer", f"unknown optimizer {value!r}; choose one of {', '.join(OPTIMIZERS)}"
            )
        return value


@dataclass(frozen=True, config=_CONFIG)
class CheckpointsSection:
    """When to write ``<name>-<step>.pt`` (0: only the final file) and whether with ``.optim``."""

    save_every: int = Field(default=500, ge=0)
    save_optimizer_state: bool = True


@dataclass(frozen=True, config=_CONFIG)
class SamplePrompt:
    """One preview image's fixed generation parameters."""

    prompt: str = Field(min_length=1, max_length=2000)
    negative_prompt: str = Field(default="", max_length=2000)
    seed: int = Field(default=1, ge=0, le=2**32 - 1)
    steps: int = Field(default=20, ge=1, le=150)
    sampler: Sampler = "euler_a"
    cfg_scale: float = Field(default=7.0, ge=1.0, le=30.0)
    width: int = Field(default=512, ge=64, le=4096, multiple_of=8)
    height: int = Field(default=512, ge=64, le=4096, multiple_of=8)


@dataclass(frozen=True, config=_CONFIG)
class SamplesSection:
    """Preview grids every ``every`` steps (0: only the final comparison); no prompts: a training caption."""

    every: int = Field(default=500, ge=0)
    prompts: tuple[SamplePrompt, ...] = Field(default=(), max_length=16)
    strengths: tuple[float, ...] = Field(default=(0.0, 0.5, 1.0), min_length=1, max_length=8)

    @field_validator("strengths")
    @classmethod
    def _strength_range(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 <= s <= 2.0 for s in value):
            raise _custom("out_of_range", "every strength must lie in [0, 2]")
        return value


@dataclass(frozen=True, config=_CONFIG)
class TrainingSpec:
    """A whole training job: what to train, on what, how, and what to write along the way."""

    name: str = "hypernetwork"
    dataset_id: str | None = None  # API: a dataset id; CLI: a folder or zip path
    base_model: str | None = None  # API: a model id; CLI: a model path
    hypernetwork: HypernetworkSpec = Field(default_factory=HypernetworkSpec)
    init_from: str | None = None  # API: artifact id of a .pt to continue from; CLI: a path
    training: TrainingSection = Field(default_factory=TrainingSection)
    checkpoints: CheckpointsSection = Field(default_factory=CheckpointsSection)
    samples: SamplesSection = Field(default_factory=SamplesSection)
    end_user_id: str | None = Field(default=None, max_length=200)
    metadata: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        # The name becomes file names (<name>.pt, <name>-<step>.pt) here and on artists' machines.
        if not value or value.strip() != value:
            raise _custom("invalid_name", "the name must be non-empty without leading or trailing spaces")
        if len(value) > 64:
            raise _custom("invalid_name", "the name must be at most 64 characters")
        if value in {".", ".."} or value.startswith(".") or _UNSAFE_NAME.search(value):
            raise _custom(
                "invalid_name",
                'the name must be a plain file name: no path separators, control characters, <>:"|?* '
                "or leading dot",
            )
        return value


_ADAPTER: TypeAdapter[TrainingSpec] = TypeAdapter(TrainingSpec)

# pydantic's error types folded into the few codes clients handle.
_CODES: dict[str, str] = {
    "unexpected_keyword_argument": "unknown_field",
    "extra_forbidden": "unknown_field",
    "missing": "missing",
    "missing_argument": "missing",
    "literal_error": "invalid_choice",
    "invalid-json-value": "invalid_type",
}
_RANGE_TYPES = ("greater_than", "less_than", "too_short", "too_long", "multiple_of", "string_too")


class SpecError(InvalidOptionError):
    """A training spec failed validation; ``errors`` lists each problem with its JSON pointer."""

    code = "invalid_spec"

    def __init__(self, errors: list[dict[str, str]]) -> None:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{first['pointer']}: {first['detail']}{more}", option=first["pointer"])
        self.errors = errors


def _pointer(loc: tuple[int | str, ...], option: str | None) -> str:
    parts = [str(p).replace("~", "~0").replace("/", "~1") for p in loc]
    if option:
        parts.append(option)
    return "/" + "/".join(parts) if parts else ""


def _code(pydantic_type: str) -> str:
    if pydantic_type in _CODES:
        return _CODES[pydantic_type]
    if pydantic_type.startswith(_RANGE_TYPES):
        return "out_of_range"
    if pydantic_type.endswith(("_type", "_parsing", "_from_float")) or pydantic_type.startswith("dataclass"):
        return "invalid_type"
    return pydantic_type  # our own PydanticCustomError codes pass through


def _spec_error(exc: ValidationError) -> SpecError:
    errors = []
    for err in exc.errors(include_url=False):
        ctx = err.get("ctx") or {}
        option = ctx.get("option") if isinstance(ctx.get("option"), str) else None
        code = _code(err["type"])
        detail = f"unknown field {err['loc'][-1]!r}" if code == "unknown_field" and err["loc"] else err["msg"]
        errors.append({"pointer": _pointer(err["loc"], option), "code": code, "detail": detail})
    return SpecError(errors)


def parse_spec(data: dict[str, Any]) -> TrainingSpec:
    """Validate a spec given as JSON-like data; raise ``SpecError`` listing every problem."""
    if not isinstance(data, dict):
        raise SpecError([{"pointer": "", "code": "invalid_type", "detail": "the spec must be a JSON object"}])
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise _spec_error(exc) from None


def spec_to_dict(spec: TrainingSpec) -> dict[str, Any]:
    """The spec as JSON-ready data (``parse_spec`` of it gives the spec back)."""
    result: dict[str, Any] = _ADAPTER.dump_python(spec, mode="json")
    return result


def _check_arch(arch: str) -> None:
    if arch not in DEFAULT_ENABLE_SIZES:
        raise InvalidOptionError(f"unknown architecture {arch!r}; expected sd1, sd2 or sdxl", option="arch")


def resolve_spec(spec: TrainingSpec, arch: str, default_sizes: Sequence[int] | None = None) -> TrainingSpec:
    """Fill the defaults that depend on the base model: ``enable_sizes`` for ``sd1``, ``sd2``, ``sdxl``.

    ``default_sizes`` replaces the architecture's table (for models with other attention widths,
    such as the tiny test models); a spec that names its sizes keeps them.
    """
    _check_arch(arch)
    if spec.hypernetwork.enable_sizes is not None:
        return spec
    data = spec_to_dict(spec)
    sizes = DEFAULT_ENABLE_SIZES[arch] if default_sizes is None else tuple(default_sizes)
    data["hypernetwork"]["enable_sizes"] = list(sizes)
    return parse_spec(data)


def spec_warnings(spec: TrainingSpec) -> list[str]:
    """Human-readable warnings about valid but probably unwanted settings."""
    t = spec.training
    schedule = Schedule.parse(t.learn_rate, t.steps)
    warnings: list[str] = []
    if schedule.max_value > LR_WARNING_THRESHOLD:
        warnings.append(
            f"learning rate {schedule.max_value:g} is above {LR_WARNING_THRESHOLD:g}; hypernetworks usually "
            "train at 5e-6 to 5e-7 and overfit or collapse at high rates"
        )
    if schedule.end_step < t.steps:
        warnings.append(
            f"the learning-rate schedule ends at step {schedule.end_step}, before steps={t.steps}"
        )
    if t.steps > STEPS_WARNING_THRESHOLD:
        warnings.append(f"{t.steps} steps is above {STEPS_WARNING_THRESHOLD}; 10,000-20,000 is usual")
    if t.varsize and t.bucketing:
        warnings.append("varsize and bucketing are both on; bucketing is used")
    if t.clip_grad_mode == "disabled" and t.clip_grad_value != "0.1":
        warnings.append("clip_grad_value is set but clip_grad_mode is 'disabled', so no clipping happens")
    warnings.extend(spec.hypernetwork.options().warnings())
    return warnings


# Rough throughput of a current datacentre GPU (bf16, SDPA, frozen UNet) in seconds per
# 512x512 image for one training step, and per UNet evaluation while sampling. Used only for
# quotes; the worker reports measured progress.
_SECONDS_PER_IMAGE_512: dict[str, float] = {"sd1": 0.06, "sd2": 0.06, "sdxl": 0.2}
_SECONDS_PER_SAMPLE_STEP_512: dict[str, float] = {"sd1": 0.02, "sd2": 0.02, "sdxl": 0.07}


def estimate(spec: TrainingSpec, arch: str) -> dict[str, int | float]:
    """Sizes and a rough duration: hypernetwork_bytes, optimizer_bytes, steps, seconds."""
    _check_arch(arch)
    options = resolve_spec(spec, arch).hypernetwork.options()
    t = spec.training
    steps = Schedule.parse(t.learn_rate, t.steps).end_step
    params = options.parameter_count()
    optimizer_bytes = 4 * params * _OPTIMIZER_STATE_COPIES.get(t.optimizer, 2)
    pixels = t.width * t.height / (512 * 512)
    seconds = steps * t.batch_size * t.gradient_accumulation_steps * pixels * _SECONDS_PER_IMAGE_512[arch]
    s = spec.samples
    events = (steps // s.every if s.every else 0) + 1  # periodic grids plus the final comparison
    for prompt in s.prompts:
        size = prompt.width * prompt.height / (512 * 512)
        # classifier-free guidance doubles the batch; one image per strength
        seconds += events * len(s.strengths) * prompt.steps * 2 * size * _SECONDS_PER_SAMPLE_STEP_512[arch]
    return {
        "hypernetwork_bytes": int(options.estimated_file_bytes()),
        "optimizer_bytes": int(optimizer_bytes),
        "steps": steps,
        "seconds": round(seconds, 1),
    }
