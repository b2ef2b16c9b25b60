"""The dashboard tier: a real uvicorn server per test (as tests/api does), on both backends;
its browser tests drive Debian's chromium with Playwright (test_browser.py)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import delete

from dash_helpers import serve
from jobq.api.app import create_app
from jobq.service import JobService
from jobq.settings import Settings, load_settings
from jobq.store import SqlStore
from jobq.store.tables import api_keys


def _delete_keys(store: SqlStore) -> None:
    with store.engine.begin() as conn:
        conn.execute(delete(api_keys))


@pytest.fixture
def svc(service: JobService, store: SqlStore) -> Iterator[JobService]:
    """The service, on a database without keys before and after the test."""
    _delete_keys(store)
    yield service
    _delete_keys(store)


@pytest.fixture
def fast_settings(settings: Settings) -> Settings:
    """Keys read afresh on every request (tests add and revoke them while serving)."""
    return load_settings(**{**settings.model_dump(), "api_key_cache_seconds": 0,
                            "auth_failures_per_second": 0})


@pytest.fixture
def web(fast_settings: Settings, svc: JobService) -> Iterator[httpx.Client]:
    with serve(create_app(settings=fast_settings)) as client:
        yield client
