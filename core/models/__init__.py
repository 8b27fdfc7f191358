"""Stable Diffusion base models, offline: kept configs, loading, tokenizer, tiny test models.

``load_base_model`` reads a diffusers folder or an original-layout single file
(SD1.x, SD2.x, SDXL) with no hub access; ``make_tiny_model`` writes deterministic
tiny models of the same structure for tests. Importing this package imports torch.
"""

from core.models.loading import BaseModel, TextConditioning, load_base_model
from core.models.tiny import TINY_WIDTHS, make_tiny_model

__all__ = ["TINY_WIDTHS", "BaseModel", "TextConditioning", "load_base_model", "make_tiny_model"]
