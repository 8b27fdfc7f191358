"""Datasets: validation and reports, captions, templates, bucketing, the training dataset.

Importing this package (and ``core.data.validate``, ``captions``, ``templates``,
``buckets``, ``demo``) never imports torch; only ``core.data.dataset`` and
``core.data.sampler`` do.
"""
