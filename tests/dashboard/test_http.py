"""The dashboard over real HTTP, on both backends: every page renders, user data is text,
actions need their CSRF token and the admin scope, login and logout, open mode."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from dash_helpers import HOSTILE, csrf_of, serve
from factories import claim_one
from jobq.api.app import create_app
from jobq.service import JobService
from jobq.settings import Settings
from jobq.types import JobState

PAGES = ["/dashboard", "/dashboard/jobs", "/dashboard/failed", "/dashboard/queues",
         "/dashboard/schedules", "/dashboard/workers"]


def failed_job(svc: JobService, queue: str = "default", text: str = HOSTILE) -> int:
    """A job that failed for good, with ``text`` as its error and in its traceback."""
    # The highest priority: claimed before any other job of its queue.
    job = svc.enqueue("echo", {"q": queue}, queue=queue, max_attempts=1, priority=1000).job
    claimed = claim_one(svc.store, queues=(queue,))
    assert claimed.job.id == job.id
    svc.store.fail(claimed.lease, text, f"Traceback (most recent call last):\n{text}", 0,
                   final=True)
    return job.id


def test_every_page_renders_and_shows_user_data_as_text(
        web: httpx.Client, svc: JobService) -> None:
    hostile = svc.enqueue("echo", {"html": HOSTILE}, queue="default").job.id
    failed = failed_job(svc)
    for path in [*PAGES, f"/dashboard/jobs/{hostile}", f"/dashboard/jobs/{failed}",
                 "/dashboard/jobs?state=failed&queue=default&task=echo"]:
        r = web.get(path)
        assert r.status_code == 200, (path, r.text)
        assert r.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert "<script>window" not in r.text and "<img src=x" not in r.text, path
    page = web.get(f"/dashboard/jobs/{failed}").text
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page  # shown, as text
    assert "Traceback (most recent call last)" in page
    assert f'href="/dashboard/jobs/{hostile}"' in web.get("/dashboard/jobs").text
    assert f'href="/dashboard/jobs/{failed}"' in web.get("/dashboard/failed").text
    overview = web.get("/dashboard").text
    assert "1 failed" in overview  # the chart's last hour: the failed job above
    assert f"#{hostile} echo" in overview  # the oldest waiting job


def test_a_job_page_links_its_parents_and_children(web: httpx.Client,
                                                   svc: JobService) -> None:
    a, b, c = [r.job.id for r in svc.enqueue_many([
        {"task_type": "echo"}, {"task_type": "echo", "depends_on_items": [0]},
        {"task_type": "echo", "depends_on_items": [1]}])]
    page = web.get(f"/dashboard/jobs/{b}").text
    assert f'<dd id="parents"><a href="/dashboard/jobs/{a}">#{a}</a>' in page
    assert f'<dd id="children"><a href="/dashboard/jobs/{c}">#{c}</a>' in page
    assert "waiting for</dt><dd>1 parent(s)" in page and "Cancel" in page
    assert 'id="parents"' not in web.get(f"/dashboard/jobs/{a}").text
    assert "waiting" in web.get("/dashboard/jobs?state=waiting").text


def test_static_assets_are_served_from_the_package(web: httpx.Client) -> None:
    for name, kind in (("dashboard.js", "javascript"), ("dashboard.css", "text/css"),
                       ("favicon.svg", "image/svg+xml")):
        r = web.get(f"/dashboard/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"], name


def test_errors_are_html_pages(web: httpx.Client) -> None:
    for path, status in (("/dashboard/nope", 404), ("/dashboard/jobs/999999", 404),
                         ("/dashboard/jobs/abc", 400), ("/dashboard/jobs?state=bogus", 400),
                         ("/dashboard/jobs?stat=failed", 400),
                         ("/dashboard/jobs?cursor=xyz", 422),
                         ("/dashboard/jobs?tag=" + "x" * 300, 400)):
        r = web.get(path)
        assert r.status_code == status, (path, r.status_code, r.text)
        assert r.headers["content-type"].startswith("text/html"), path
    assert web.get("/dashboard/").status_code == 303


def test_actions_need_the_sessions_csrf_token(web: httpx.Client, svc: JobService) -> None:
    job = failed_job(svc, text="boom")
    token = csrf_of(web.get(f"/dashboard/jobs/{job}").text)
    url = f"/dashboard/jobs/{job}/retry"
    assert web.post(url, data={"next": "/dashboard"}).status_code == 403
    assert web.post(url, data={"csrf": "0" * 64}).status_code == 403
    assert web.post(url, json={"csrf": token}).status_code == 400  # a form, not JSON
    # Another site's page: its Origin is refused before anything runs.
    assert web.post(url, data={"csrf": token},
                    headers={"Origin": "http://evil.example"}).status_code == 403
    # Another browser (no cookie of this session) with this page's token.
    with httpx.Client(base_url=str(web.base_url)) as other:
        assert other.post(url, data={"csrf": token}).status_code == 403
    assert svc.get(job).state is JobState.FAILED
    r = web.post(url, data={"csrf": token, "next": "https://evil.example/"})
    assert r.status_code == 303
    assert r.headers["location"] == "/dashboard?notice=retried"  # never elsewhere
    assert svc.get(job).state is JobState.PENDING


def test_cancel_retry_all_pause_and_resume_from_forms(
        web: httpx.Client, svc: JobService) -> None:
    pending = svc.enqueue("echo", {}, queue="mail").job.id
    token = csrf_of(web.get("/dashboard/jobs").text)
    r = web.post(f"/dashboard/jobs/{pending}/cancel",
                 data={"csrf": token, "next": "/dashboard/jobs?queue=mail"})
    assert r.status_code == 303 and r.headers["location"].startswith("/dashboard/jobs?queue=mail")
    assert svc.get(pending).state is JobState.CANCELLED
    assert "Job cancelled." in web.get(r.headers["location"]).text
    failed = [failed_job(svc, "mail", "a"), failed_job(svc, "mail", "b"), failed_job(svc)]
    r = web.post("/dashboard/failed/retry", data={"csrf": token, "queue": "mail"})
    assert r.status_code == 303
    assert "Failed jobs retried: 2." in web.get(r.headers["location"]).text
    assert [svc.get(i).state for i in failed] == [JobState.PENDING] * 2 + [JobState.FAILED]
    assert web.post("/dashboard/queues/mail/pause", data={"csrf": token}).status_code == 303
    assert svc.list_queues(allowed_queues=["mail"])[0].paused
    assert "Resume" in web.get("/dashboard/queues").text
    assert web.post("/dashboard/queues/mail/resume", data={"csrf": token}).status_code == 303
    assert not svc.list_queues(allowed_queues=["mail"])[0].paused
    # An action the state machine refuses is a page, not a 500.
    running = svc.enqueue("echo", {}, queue="busy").job.id
    assert claim_one(svc.store, queues=("busy",)).job.id == running
    r = web.post(f"/dashboard/jobs/{running}/retry", data={"csrf": token})
    assert r.status_code == 409 and "text/html" in r.headers["content-type"]


def _login(web: httpx.Client, token: str, next_: str = "/dashboard") -> httpx.Response:
    r = web.get("/dashboard/login")
    assert r.status_code == 200
    return web.post("/dashboard/login",
                    data={"csrf": csrf_of(r.text), "token": token, "next": next_})


def test_with_keys_login_scopes_and_logout(web: httpx.Client, svc: JobService) -> None:
    _, admin = svc.create_key("ops", ["*"], ["admin"])
    _, reader = svc.create_key("viewer", ["*"], ["read"])
    _, enqueuer = svc.create_key("ci", ["*"], ["enqueue"])
    job = failed_job(svc, text="boom")
    r = web.get("/dashboard/jobs?state=failed")
    assert r.status_code == 303
    assert r.headers["location"] == "/dashboard/login?next=%2Fdashboard%2Fjobs%3Fstate%3Dfailed"
    # A login without the form's token is refused, as is a wrong token.
    assert web.post("/dashboard/login", data={"token": admin}).status_code == 403
    assert _login(web, "jobq_000000000000_nope").status_code == 401
    assert _login(web, enqueuer).status_code == 403  # no read scope

    r = _login(web, reader, "/dashboard/failed")
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/failed"
    cookie = r.headers["set-cookie"]
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/dashboard", "Max-Age="):
        assert attribute.lower() in cookie.lower(), cookie
    page = web.get(f"/dashboard/jobs/{job}").text
    assert "viewer" in page and "read only" in page
    assert f"/dashboard/jobs/{job}/retry" not in page  # no action it may not take
    token = csrf_of(page)  # the logout form's
    assert web.post(f"/dashboard/jobs/{job}/retry", data={"csrf": token}).status_code == 403
    assert svc.get(job).state is JobState.FAILED
    assert web.post("/dashboard/logout", data={"csrf": token}).status_code == 303
    assert web.get("/dashboard").status_code == 303

    _login(web, admin)
    page = web.get(f"/dashboard/jobs/{job}").text
    r = web.post(f"/dashboard/jobs/{job}/retry", data={"csrf": csrf_of(page)})
    assert r.status_code == 303 and svc.get(job).state is JobState.PENDING
    # A revoked key ends its sessions (keys are read afresh here: no cache).
    svc.revoke_key(admin)
    r = web.get("/dashboard")
    assert r.status_code == 303 and "why=ended" in r.headers["location"]


def test_a_key_sees_only_its_queues(web: httpx.Client, svc: JobService) -> None:
    _, token = svc.create_key("mail", ["mail"], ["admin"])
    mine = svc.enqueue("echo", {}, queue="mail").job.id
    theirs = svc.enqueue("echo", {}, queue="billing").job.id
    _login(web, token)
    listed = web.get("/dashboard/jobs").text
    assert f"/dashboard/jobs/{mine}" in listed and f"/dashboard/jobs/{theirs}" not in listed
    assert web.get(f"/dashboard/jobs/{theirs}").status_code == 404
    assert "billing" not in web.get("/dashboard/queues").text
    csrf = csrf_of(listed)
    assert web.post(f"/dashboard/jobs/{theirs}/cancel", data={"csrf": csrf}).status_code == 404
    assert svc.get(theirs).state is JobState.PENDING


def test_open_mode_needs_no_login_and_stays_on_loopback(
        fast_settings: Settings, svc: JobService) -> None:
    with serve(create_app(settings=fast_settings)) as web:
        r = web.get("/dashboard")
        assert r.status_code == 200 and "open mode" in r.text
        assert web.get("/dashboard/login").status_code == 303  # nothing to log in to

    async def off_loopback() -> int:
        app = create_app(settings=fast_settings)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://192.0.2.10:8000") as client:
                return (await client.get("/dashboard")).status_code

    assert asyncio.run(off_loopback()) == 403


@pytest.mark.parametrize("minutes_ago", [0, 30])
def test_throughput_counts_finished_jobs_per_minute(
        svc: JobService, minutes_ago: int) -> None:
    done = svc.enqueue("echo", {}).job.id
    claimed = claim_one(svc.store)
    assert svc.store.complete(claimed.lease, {"ok": True})
    failed_job(svc)
    if minutes_ago:
        from sqlalchemy import update
        from factories import past
        from jobq.store.tables import jobs
        with svc.store.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == done)
                         .values(finished_at=past(svc.store, minutes_ago * 60 + 5)))
    buckets = svc.store.throughput(60)
    assert len(buckets) == 60
    assert sum(d for d, _ in buckets) == 1 and sum(f for _, f in buckets) == 1
    assert buckets[-1][1] == 1  # failed now: the last minute
    assert buckets[59 - minutes_ago][0] == 1
