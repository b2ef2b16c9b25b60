"""``python -m uvicorn api.main:app`` from the repository root. Settings are read at startup."""

from jobq.api import create_app

app = create_app()
