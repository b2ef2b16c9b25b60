"""What every request must pass first (``jobq/api/guards.py``) and the framing of paths and
queries: the attacks of a web page in the developer's browser against an open API on
loopback (cross-site requests, DNS rebinding), redirects built from Host, two Authorization
headers, ids that are not plain digits, and query strings that are not UTF-8.

Through a real uvicorn server and real HTTP, on every backend. A browser's requests are
made by hand: what matters is what it sends (Host, Origin, Sec-Fetch-Site), and a test can
send exactly that.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from test_api import problem, serve

from jobq.api import create_app
from jobq.service import JobService
from jobq.settings import Settings
from jobq.store import SqlStore


@pytest.fixture
def open_api(settings: Settings) -> Iterator[httpx.Client]:
    """An open API (no key) on loopback, as `jobq api` serves it by default."""
    with serve(create_app(settings=settings)) as client:
        yield client


def count(store: SqlStore) -> int:
    return len(store.list_jobs(limit=1000).items)


def port_of(client: httpx.Client) -> int:
    port = client.base_url.port
    assert port is not None
    return port


# -- Host: DNS rebinding ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/jobs", "/stats", "/healthz", "/docs", "/openapi.json"])
def test_a_foreign_host_name_is_refused_on_every_path(open_api: httpx.Client, path: str) -> None:
    # What a rebinding page sends: its own name, now resolving to 127.0.0.1.
    p = problem(open_api.get(path, headers={"Host": "evil.example"}), 400,
                "urn:jobq:problem:host-not-allowed")
    assert "JOBQ_ALLOWED_HOSTS" in p["detail"]


def test_a_rebinding_page_can_neither_read_nor_submit(
        open_api: httpx.Client, service: JobService, store: SqlStore) -> None:
    service.enqueue("echo", {"secret": 1})
    host = {"Host": f"evil.example:{port_of(open_api)}"}
    problem(open_api.get("/jobs", headers=host), 400)
    problem(open_api.post("/jobs", json={"task_type": "echo"}, headers=host), 400)
    assert count(store) == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST:8000", "[::1]:8000",
                                  "10.1.2.3"])
def test_localhost_and_addresses_are_always_answered(open_api: httpx.Client, host: str) -> None:
    assert open_api.get("/healthz", headers={"Host": host}).status_code == 200


def test_allowed_hosts_lists_names_and_wildcards(settings: Settings) -> None:
    allowed = settings.model_copy(update={"allowed_hosts": ["jobq.internal", "*.example.com"]})
    with serve(create_app(settings=allowed)) as api:
        for host in ("jobq.internal", "JOBQ.internal:443", "a.example.com", "a.b.example.com",
                     "localhost"):
            assert api.get("/healthz", headers={"Host": host}).status_code == 200, host
        for host in ("example.com", "jobq.internal.evil", "evil-example.com"):
            problem(api.get("/healthz", headers={"Host": host}), 400)
    anything = settings.model_copy(update={"allowed_hosts": ["*"]})
    with serve(create_app(settings=anything)) as api:
        assert api.get("/healthz", headers={"Host": "whatever.test"}).status_code == 200


# -- Origin: cross-site requests -------------------------------------------------------------


def _jobs(service: JobService) -> list[int]:
    return [service.enqueue("echo", n).job.id for n in range(2)]


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},  # a sandboxed frame or a file: page
    {"Origin": "http://127.0.0.1:1"},  # another port is another origin
    {"Sec-Fetch-Site": "cross-site"},
])
def test_state_changing_requests_from_another_origin_are_refused(
        open_api: httpx.Client, service: JobService, store: SqlStore, headers: dict[str, str]
) -> None:
    pending, cancelled = _jobs(service)
    service.cancel(cancelled)
    # A form's POST: text/plain needs no CORS preflight, so the browser sends it as is.
    form = open_api.post("/jobs?task_type=echo&payload=x",
                         headers={"Content-Type": "text/plain", **headers}, content="")
    problem(form, 403, "urn:jobq:problem:origin-not-allowed")
    problem(open_api.post(f"/jobs/{pending}/cancel", headers=headers), 403)
    problem(open_api.post(f"/jobs/{cancelled}/retry", headers=headers), 403)
    problem(open_api.post("/jobs/batch", json={"jobs": [{"task_type": "echo"}]},
                          headers=headers), 403)
    assert count(store) == 2
    assert [service.get(pending).state.value, service.get(cancelled).state.value] == [
        "pending", "cancelled"]


def test_the_apis_own_origin_and_listed_origins_may_submit(
        settings: Settings, service: JobService) -> None:
    listed = settings.model_copy(update={"allowed_origins": ["https://app.example.com/"]})
    with serve(create_app(settings=listed)) as api:
        own = f"http://127.0.0.1:{port_of(api)}"
        for origin in (own, "https://app.example.com", "HTTPS://APP.EXAMPLE.COM"):
            made = api.post("/jobs", json={"task_type": "echo"}, headers={"Origin": origin})
            assert made.status_code == 201, (origin, made.text)
        problem(api.post("/jobs", json={"task_type": "echo"},
                         headers={"Origin": "https://app.example.com.evil"}), 403)
        # Reads are not refused: the browser keeps a cross-origin answer from the page (no
        # CORS headers), and a page's own reads must work.
        assert api.get("/jobs", headers={"Origin": "https://evil.example"}).status_code == 200


def test_clients_without_origin_are_not_affected(open_api: httpx.Client) -> None:
    made = open_api.post("/jobs?task_type=echo&payload=hello")  # the brief's curl call
    assert made.status_code == 201, made.text


# -- redirects ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/jobs/1/", "/jobs/", "/stats/"])
def test_no_redirect_is_built_from_the_host_header(settings: Settings, path: str) -> None:
    anything = settings.model_copy(update={"allowed_hosts": ["*"]})
    with serve(create_app(settings=anything)) as api:
        resp = api.get(path, headers={"Host": "evil.example"}, follow_redirects=False)
        problem(resp, 404)
        assert "location" not in resp.headers


# -- framing ---------------------------------------------------------------------------------


def test_two_authorization_headers_are_a_400(open_api: httpx.Client) -> None:
    headers = httpx.Headers([("Authorization", "Bearer a"), ("Authorization", "Bearer b")])
    p = problem(open_api.get("/jobs", headers=headers), 400, "urn:jobq:problem:ambiguous-request")
    assert "Authorization" in p["detail"]


@pytest.mark.parametrize("raw", ["1_0", "+1", " 1", "1 ", "٣", "0x1", "1e0", "1.0"])
def test_job_ids_in_paths_are_plain_digits(
        open_api: httpx.Client, service: JobService, raw: str) -> None:
    for _ in range(10):
        service.enqueue("echo", None)
    for route in ("", "/cancel", "/retry"):
        method = "GET" if route == "" else "POST"
        resp = open_api.request(method, f"/jobs/{httpx.URL(path=raw).path}{route}")
        p = problem(resp, 422, "urn:jobq:problem:validation-error")
        assert p["errors"][0]["loc"] == ["path", "job_id"], p
    assert open_api.get("/jobs/10").status_code == 200
    assert open_api.get("/jobs/010").status_code == 200  # plain digits, leading zero or not


@pytest.mark.parametrize("query", ["task_type=echo&payload=%FF", "task_type=echo&payload=%C3",
                                   "task_type=echo&%FF=1", "task_type=ech%80o"])
def test_a_query_that_is_not_utf8_is_a_422_and_nothing_is_stored(
        open_api: httpx.Client, store: SqlStore, query: str) -> None:
    p = problem(open_api.post(f"/jobs?{query}"), 422, "urn:jobq:problem:validation-error")
    assert p["errors"][0]["loc"][0] == "query"
    problem(open_api.get(f"/jobs?{query.replace('task_type=echo&', '')}"), 422)
    assert count(store) == 0
    made: Any = open_api.post("/jobs?task_type=echo&payload=%C3%A9")  # é, two bytes of UTF-8
    assert made.status_code == 201 and made.json()["payload"] == "é"
