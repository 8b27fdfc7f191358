"""A1111-compatible hypernetworks: options (torch-free), torch modules and file formats.

Importing this package imports only the torch-free ``options`` module, so the API can use
it. The torch parts are imported explicitly: ``core.hypernetwork.module`` (``Hypernetwork``,
``HypernetworkModule``, ``apply_hypernetworks``) and ``core.hypernetwork.fileformat``
(``save_pt``, ``load_pt``, ``save_safetensors``, ``load_safetensors``, ``load_any``,
``save_optimizer``, ``load_optimizer_state``, ``inspect_file``).
"""

from core.hypernetwork.options import (
    ALLOWED_ACTIVATIONS,
    ALLOWED_INITIALIZATIONS,
    DEFAULT_ENABLE_SIZES,
    HypernetworkOptions,
    validate_name,
)

__all__ = [
    "ALLOWED_ACTIVATIONS",
    "ALLOWED_INITIALIZATIONS",
    "DEFAULT_ENABLE_SIZES",
    "HypernetworkOptions",
    "validate_name",
]
