"""The dashboard in a real browser (Debian's chromium, driven by Playwright): the pages load
without a console error, a job submitted over REST appears (auto-refresh too), retry and
cancel work from the page, a hostile payload stays text, login with a token. SQLite only:
the pages' reads are tested on both backends in test_http.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from browser import chromium, missing_reason, watched_page
from dash_helpers import HOSTILE, serve
from jobq.api.app import create_app
from jobq.service import JobService
from jobq.settings import Settings, load_settings
from jobq.types import JobState

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")

PAGES = ["/dashboard", "/dashboard/jobs", "/dashboard/failed", "/dashboard/queues",
         "/dashboard/schedules", "/dashboard/workers"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture
def lite(tmp_path: Path) -> Settings:
    return load_settings(database_url=f"sqlite:///{tmp_path / 'jobq.db'}",
                         api_key_cache_seconds=0)


@pytest.fixture
def site(lite: Settings) -> Iterator[tuple[httpx.Client, JobService]]:
    with JobService.from_settings(lite) as svc, serve(create_app(settings=lite)) as api:
        yield api, svc


def test_pages_load_clean_and_a_hostile_job_submitted_over_rest_stays_text(
        browser: Any, site: tuple[httpx.Client, JobService]) -> None:
    api, _ = site
    job = api.post("/jobs", json={"task_type": "echo", "payload": {"html": HOSTILE}}).json()
    base = str(api.base_url)
    with watched_page(browser) as (page, problems):
        for path in PAGES:
            page.goto(base + path)
            assert page.locator("h1").first.is_visible(), path
        page.goto(base + "/dashboard/jobs")
        page.locator(f'tr[data-job-id="{job["id"]}"] a').click()
        page.wait_for_url(f"**/dashboard/jobs/{job['id']}")
        shown = page.locator("#payload").inner_text()  # JSON text: its quotes escaped
        assert "<script>window.__pwned = 1</script><img src=x onerror=" in shown
        assert page.evaluate("window.__pwned") is None  # and never run
        assert page.locator("#payload img").count() == 0
        assert problems == []


def test_cancel_and_retry_from_the_page(
        browser: Any, site: tuple[httpx.Client, JobService]) -> None:
    api, svc = site
    job = api.post("/jobs", json={"task_type": "echo", "payload": {}}).json()["id"]
    with watched_page(browser) as (page, problems):
        page.goto(f"{api.base_url}/dashboard/jobs/{job}")
        page.get_by_role("button", name="Cancel").click()
        page.wait_for_url(re.compile(r"notice=cancelled"))
        assert page.locator("h1 .state").inner_text() == "cancelled"
        assert svc.get(job).state is JobState.CANCELLED
        page.get_by_role("button", name="Retry").click()
        page.wait_for_url(re.compile(r"notice=retried"))
        assert page.locator("h1 .state").inner_text() == "pending"
        # Retry all from the failed jobs' page (its confirm dialog is accepted).
        svc.cancel(job)
        page.goto(f"{api.base_url}/dashboard/jobs?state=cancelled")
        page.locator(f'tr[data-job-id="{job}"]').get_by_role("button", name="Retry").click()
        page.wait_for_url(re.compile(r"/dashboard/jobs\?state=cancelled&notice=retried"))
        assert svc.get(job).state is JobState.PENDING
        assert problems == []


def test_the_jobs_page_refreshes_itself(
        browser: Any, site: tuple[httpx.Client, JobService]) -> None:
    api, _ = site
    with watched_page(browser) as (page, problems):
        page.goto(f"{api.base_url}/dashboard/jobs")
        job = api.post("/jobs", json={"task_type": "echo", "payload": {}}).json()["id"]
        page.locator(f'tr[data-job-id="{job}"]').wait_for(timeout=12_000)
        assert problems == []


def test_login_with_a_token(browser: Any, site: tuple[httpx.Client, JobService]) -> None:
    api, svc = site
    _, token = svc.create_key("ops", ["*"], ["admin"])
    with watched_page(browser) as (page, problems):
        page.goto(f"{api.base_url}/dashboard/queues")
        page.wait_for_url(re.compile(r"/dashboard/login"))
        page.get_by_label("API token").fill(token)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(re.compile(r"/dashboard/queues$"))
        assert "ops" in page.locator("header .who").inner_text()
        cookie = page.context.cookies()[0]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert page.evaluate("document.cookie") == ""  # no script can read the session
        page.get_by_role("button", name="Log out").click()
        page.wait_for_url(re.compile(r"/dashboard/login"))
        assert problems == []
