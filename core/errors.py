"""The core error hierarchy: every failure core reports is a ``HyperforgeError``.

Each error carries a stable snake_case ``code`` (the API renders it verbatim in
problem+json) and, where one option or field is at fault, the ``option`` name.
"""

from __future__ import annotations


class HyperforgeError(Exception):
    """Base class of every error raised by core."""

    code: str = "hyperforge_error"

    def __init__(self, message: str, *, code: str | None = None, option: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.option = option

    def __str__(self) -> str:
        if self.option and not self.message.startswith(self.option):
            return f"{self.option}: {self.message}"
        return self.message


class InvalidOptionError(HyperforgeError, ValueError):
    """A configuration value is out of range, of the wrong shape or unknown."""

    code = "invalid_option"


class FileFormatError(HyperforgeError, ValueError):
    """A hypernetwork, checkpoint or model file cannot be read as what it claims to be."""

    code = "invalid_file"


class ModelLoadError(HyperforgeError):
    """A base model cannot be loaded (missing parts, unknown layout, unsafe pickle)."""

    code = "model_load_failed"


class DatasetError(HyperforgeError, ValueError):
    """A dataset as a whole cannot be used (for example: no usable image in it)."""

    code = "invalid_dataset"


class TrainingError(HyperforgeError):
    """Training cannot continue (for example: the loss became NaN)."""

    code = "training_failed"
