"""Pydantic request and response models of the HTTP edge, one module per domain."""
