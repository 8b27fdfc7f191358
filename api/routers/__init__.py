"""The app's routers. ``create_app`` includes every router in ``ROUTERS``, in order.

Add a router by importing it here and appending it to ``ROUTERS``.
"""

from __future__ import annotations

from fastapi import APIRouter

from api.routers import admin, artifacts, datasets, events, jobs, models, ops, webhooks

ROUTERS: list[APIRouter] = [
    ops.router,
    datasets.router,
    models.router,
    admin.router,
    jobs.router,
    events.router,
    artifacts.router,
    webhooks.router,
]
