"""The app's routers. ``create_app`` includes every router in ``ROUTERS``, in order.

Add a router by importing it here and appending it to ``ROUTERS``.
"""

from __future__ import annotations

from fastapi import APIRouter

from api.routers import admin, datasets, models, ops

ROUTERS: list[APIRouter] = [
    ops.router,
    datasets.router,
    models.router,
    admin.router,
]
