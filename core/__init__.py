"""Hyperforge core: A1111-compatible hypernetworks on diffusers models.

This package knows nothing of HTTP, SQL, queues, object stores or environment
variables. Importing ``core`` (and the torch-free modules ``core.errors``,
``core.spec``, ``core.hypernetwork.options`` and ``core.data.validate``) never
imports torch, so the API can use them and still start fast.
"""

__version__ = "0.1.0"
