"""HTTP API: FastAPI routers per task and the app factory (local gateway and Modal)."""

from fnbundle.api.app import create_app

__all__ = ["create_app"]
