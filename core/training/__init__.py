"""The training loop and what it needs: schedules, callbacks, outputs, resume.

This package's ``__init__`` imports nothing so that the torch-free
``core.training.schedule`` can be used by ``core.spec`` (and so by the API)
without pulling torch in.
"""
