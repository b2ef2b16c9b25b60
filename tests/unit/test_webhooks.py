"""Completion webhooks without a network: the URL checks, the payload and its seal, and the
signature that receivers verify (jobq.webhooks)."""

from __future__ import annotations

import ipaddress
import json
from datetime import datetime, timezone

import pytest

from jobq import webhooks
from jobq.errors import ConfigError, InvalidJob
from jobq.jsonvalue import check_json_value
from jobq.registry import load_registry
from jobq.settings import load_settings
from jobq.webhooks import check_callback_url, sign, verify

OK = [
    "https://example.com/hook",
    "http://example.com",
    "HTTPS://Example.COM:8443/a/b?c=d&e=%20f",
    "https://hooks.example.com./x",           # a fully qualified name
    "http://8.8.8.8/x",
    "http://[2606:4700:4700::1111]:8080/x",
    "https://under_score.example.com/",
]

REFUSED = [
    ("ftp://example.com/", "http:// or https://"),
    ("javascript:alert(1)", "http:// or https://"),
    ("http:example.com", "http:// or https://"),
    ("https://", "needs a host"),
    ("https:///path", "needs a host"),
    ("https://user:pw@example.com/", "user name or password"),
    ("https://user@example.com/", "user name or password"),
    ("https://example.com\\@127.0.0.1/", "ASCII URL"),
    ("https://exa mple.com/", "ASCII URL"),
    ("https://example.com/\r\nX-Injected: 1", "ASCII URL"),
    ("https://example.com/\t", "ASCII URL"),
    ("https://bücher.de/", "ASCII URL"),
    ("https://example.com:99999/", "not a valid URL"),
    ("https://example.com:0/", "port 0"),
    ("https://exa_mple-.com-/", "not a valid host name"),
    ("https://" + "a" * 64 + ".com/", "not a valid host name"),
    ("https://example.com/" + "a" * 2000, "at most 2000"),
    ("http://127.0.0.1:8000/", "loopback"),
    ("http://127.1/", "loopback"),                 # the forms a resolver reads as IPv4
    ("http://2130706433/", "loopback"),
    ("http://0x7f000001/", "loopback"),
    ("http://10.0.0.5/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://169.254.169.254/latest/meta-data", "link-local"),  # cloud metadata
    ("http://100.64.0.1/", "non-public"),          # carrier-grade NAT
    ("http://0.0.0.0/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://[::1]/", "loopback"),
    ("http://[::]/", "unspecified"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fc00::1]/", "private"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[::ffff:127.0.0.1]/", "::ffff:7f00:1"),   # IPv4-mapped
    ("http://[::ffff:10.0.0.1]/", "::ffff:a00:1"),
    ("http://[64:ff9b::7f00:1]/", "64:ff9b::7f00:1"),  # NAT64 of 127.0.0.1
    ("http://[2002:7f00:1::]/", "2002:7f00:1::"),      # 6to4 of 127.0.0.1
    ("http://localhost:8000/", "this machine"),
    ("http://api.localhost/", "this machine"),
    ("http://LOCALHOST./", "this machine"),
]


@pytest.mark.parametrize("url", OK)
def test_urls_that_are_accepted(url: str) -> None:
    assert check_callback_url(url, allow_private=False) == url


@pytest.mark.parametrize(("url", "why"), REFUSED)
def test_urls_that_are_refused(url: str, why: str) -> None:
    with pytest.raises(InvalidJob) as err:
        check_callback_url(url, allow_private=False)
    assert err.value.field == "callback_url"
    assert why in err.value.problem, err.value.problem
    assert str(err.value).startswith("callback_url: ")


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/hook", "http://[::1]/", "http://10.1.2.3/",
                                 "http://localhost/", "http://[::ffff:127.0.0.1]/",
                                 "http://169.254.169.254/"])
def test_allow_private_lets_private_addresses_through(url: str) -> None:
    assert check_callback_url(url, allow_private=True) == url


@pytest.mark.parametrize("url", ["http://0.0.0.0/", "http://224.0.0.1/", "http://[ff02::1]/",
                                 "ftp://127.0.0.1/", "http://u:p@127.0.0.1/"])
def test_allow_private_still_refuses_what_is_never_a_receiver(url: str) -> None:
    with pytest.raises(InvalidJob):
        check_callback_url(url, allow_private=True)


def test_a_non_string_is_refused() -> None:
    with pytest.raises(InvalidJob, match="must be a string"):
        check_callback_url(None, allow_private=False)  # type: ignore[arg-type]


def test_check_callback_needs_a_secret() -> None:
    with pytest.raises(InvalidJob, match="JOBQ_WEBHOOK_SECRET"):
        webhooks.check_callback("https://example.com/", load_settings(webhook_secret=None))
    s = load_settings(webhook_secret="s" * 32)
    assert webhooks.check_callback("https://example.com/", s) == "https://example.com/"
    with pytest.raises(InvalidJob, match="loopback"):
        webhooks.check_callback("http://127.0.0.1/", s)
    assert webhooks.check_callback("http://127.0.0.1/", s.model_copy(
        update={"webhook_allow_private": True})) == "http://127.0.0.1/"


def test_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("JOBQ_WEBHOOK_SECRET", "JOBQ_WEBHOOK_ALLOW_PRIVATE"):
        monkeypatch.delenv(key, raising=False)
    s = load_settings()
    assert (s.webhook_secret, s.webhook_allow_private, s.webhook_timeout_seconds,
            s.webhook_max_attempts, s.webhook_backoff_base_seconds,
            s.webhook_backoff_cap_seconds) == (None, False, 10.0, 20, 2.0, 300.0)
    monkeypatch.setenv("JOBQ_WEBHOOK_SECRET", "x" * 20)
    monkeypatch.setenv("JOBQ_WEBHOOK_ALLOW_PRIVATE", "true")
    s = load_settings()
    assert (s.webhook_secret, s.webhook_allow_private) == ("x" * 20, True)
    monkeypatch.setenv("JOBQ_WEBHOOK_SECRET", "")
    assert load_settings().webhook_secret is None
    monkeypatch.setenv("JOBQ_WEBHOOK_SECRET", "short")
    with pytest.raises(ConfigError, match="JOBQ_WEBHOOK_SECRET"):
        load_settings()
    monkeypatch.delenv("JOBQ_WEBHOOK_SECRET")
    with pytest.raises(ConfigError, match="JOBQ_WEBHOOK_BACKOFF_CAP_SECONDS"):
        load_settings(webhook_backoff_base_seconds=10, webhook_backoff_cap_seconds=5)


def test_address_problem_checks_what_an_ipv6_address_carries() -> None:
    teredo = ipaddress.ip_address("2001:0:4136:e378:8000:63bf:f5ff:fffe")  # client 10.0.0.1
    assert teredo.teredo is not None
    assert webhooks.address_problem(teredo, allow_private=False) is not None
    assert webhooks.address_problem(ipaddress.ip_address("2606:4700::1"), False) is None


# -- Signatures -------------------------------------------------------------------------------

SECRET = b"whsec_0123456789abcdef"
BODY = b'{"job_id":1,"state":"done"}'


def test_sign_is_hmac_sha256_over_the_timestamp_and_the_body() -> None:
    import hashlib
    import hmac

    header = sign(SECRET, 1_700_000_000, BODY)
    mac = hmac.new(SECRET, b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={mac}"
    assert sign(SECRET.decode(), 1_700_000_000, BODY) == header  # a str secret is its UTF-8


def test_verify_accepts_what_sign_made() -> None:
    header = sign(SECRET, 1_700_000_000, BODY)
    assert verify(SECRET, header, BODY, now=1_700_000_000)
    assert verify(SECRET.decode(), header, BODY, now=1_700_000_000 + 299)
    assert verify(SECRET, header, BODY, now=1_700_000_000 - 299)   # a receiver's clock behind
    assert verify(SECRET, header.replace(",", ", "), BODY, now=1_700_000_000)


def test_verify_with_the_clock() -> None:
    import time

    assert verify(SECRET, sign(SECRET, int(time.time()), BODY), BODY)


@pytest.mark.parametrize("case", ["tampered body", "wrong secret", "stale", "future",
                                  "tampered mac", "tampered timestamp"])
def test_verify_refuses(case: str) -> None:
    t = 1_700_000_000
    header, body, secret, now = sign(SECRET, t, BODY), BODY, SECRET, float(t)
    if case == "tampered body":
        body = BODY.replace(b"done", b"fail")
    elif case == "wrong secret":
        secret = b"whsec_another_secret_entirely"
    elif case == "stale":
        now = t + 301
    elif case == "future":
        now = t - 301
    elif case == "tampered mac":
        header = header[:-1] + ("0" if header[-1] != "0" else "1")
    elif case == "tampered timestamp":
        header = header.replace(f"t={t}", f"t={t + 1}")
        now = t + 1
    assert not verify(secret, header, body, now=now)


def test_verify_tolerance_is_the_callers() -> None:
    header = sign(SECRET, 1000, BODY)
    assert not verify(SECRET, header, BODY, now=1061, tolerance_seconds=60)
    assert verify(SECRET, header, BODY, now=1061, tolerance_seconds=3600)


@pytest.mark.parametrize("header", [None, "", "garbage", "t=1", "v1=ab", "t=x,v1=ab",
                                    "t=1,t=1,v1=ab", "t=-5,v1=ab", "t=1;v1=ab", 42,
                                    "t=1700000000,v1=\u00e9\u00e9"])
def test_verify_malformed_headers_are_false(header: object) -> None:
    assert verify(SECRET, header, BODY, now=1_700_000_000) is False  # type: ignore[arg-type]


def test_verify_accepts_any_of_several_v1() -> None:
    good = sign(SECRET, 1_700_000_000, BODY)
    assert verify(SECRET, "t=1700000000,v1=" + "0" * 64 + "," + good.split(",")[1], BODY,
                  now=1_700_000_000)


# -- The payload ------------------------------------------------------------------------------

WHEN = datetime(2026, 12, 7, 14, 30, 0, 123456, tzinfo=timezone.utc)


def test_the_payload_of_a_done_job() -> None:
    p = webhooks.webhook_payload(url="https://example.com/h", job_id=42, state="done",
                                 task_type="resize", queue="default", finished_at=WHEN,
                                 result={"resized": 2}, last_error="an earlier attempt",
                                 secret="s" * 16)
    assert set(p) == {"url", "body", "seal"}
    assert p["url"] == "https://example.com/h"
    assert p["body"] == {"job_id": 42, "state": "done", "task_type": "resize",
                         "queue": "default", "finished_at": "2026-12-07T14:30:00.123456Z",
                         "result": {"resized": 2}}
    assert webhooks.body_bytes(p["body"]) == (
        b'{"finished_at":"2026-12-07T14:30:00.123456Z","job_id":42,"queue":"default",'
        b'"result":{"resized":2},"state":"done","task_type":"resize"}')
    json.dumps(p)
    check_json_value(p)


@pytest.mark.parametrize("state", ["failed", "cancelled"])
def test_the_payload_of_a_job_that_did_not_succeed(state: str) -> None:
    p = webhooks.webhook_payload(url="https://example.com/h", job_id=7, state=state,
                                 task_type="t", queue="q", finished_at="2026-01-01T00:00:00Z",
                                 result=None, last_error="ValueError: nope", secret=None)
    assert "seal" not in p  # no secret: no seal (and the delivery will refuse it)
    assert p["body"] == {"job_id": 7, "state": state, "task_type": "t", "queue": "q",
                         "finished_at": "2026-01-01T00:00:00Z", "error": "ValueError: nope"}


def test_a_result_too_big_for_a_payload_is_left_out() -> None:
    big = ["x" * 65_536] * 16  # 1 MiB of text: a storable result with nothing to spare
    check_json_value(big, name="result")
    p = webhooks.webhook_payload(url="https://example.com/h", job_id=1, state="done",
                                 task_type="t", queue="q", finished_at=WHEN, result=big,
                                 secret="s" * 16)
    assert p["body"]["result"] is None and p["body"]["result_omitted"] is True
    check_json_value(p)


def test_a_naive_finished_at_is_utc() -> None:
    p = webhooks.webhook_payload(url="https://e.com/", job_id=1, state="done", task_type="t",
                                 queue="q", finished_at=datetime(2026, 1, 2, 3, 4, 5),
                                 secret=None)
    assert p["body"]["finished_at"] == "2026-01-02T03:04:05Z"


def test_webhook_job_is_the_job_to_enqueue() -> None:
    s = load_settings(webhook_secret="s" * 16, webhook_max_attempts=7)
    job = webhooks.webhook_job(url="https://example.com/h", job_id=3, state="failed",
                               task_type="t", queue="emails", finished_at=WHEN,
                               last_error="boom", settings=s)
    assert (job.task_type, job.queue, job.max_attempts) == ("jobq.webhook", "emails", 7)
    assert job.payload["body"]["error"] == "boom" and "seal" in job.payload


def test_the_seal_covers_url_and_body() -> None:
    secret = "s" * 16
    p = webhooks.webhook_payload(url="https://example.com/h", job_id=3, state="done",
                                 task_type="t", queue="q", finished_at=WHEN, result=1,
                                 secret=secret)
    assert webhooks._unsealed(p, secret) == (p["url"], p["body"])
    for forged in ({**p, "url": "https://evil.example/"},
                   {**p, "body": {**p["body"], "state": "failed"}},
                   {k: v for k, v in p.items() if k != "seal"}, {"url": 1}, None):
        with pytest.raises(webhooks.WebhookRefused):
            webhooks._unsealed(forged, secret)
    with pytest.raises(webhooks.WebhookRefused, match="does not match"):
        webhooks._unsealed(p, "another secret!!")


def test_the_task_is_registered_with_its_policy() -> None:
    t = load_registry([]).get("jobq.webhook")
    assert t.is_async and t.wants_context and t.max_attempts == 20
    assert not t.policy.retries(webhooks.WebhookRejected("400"))
    assert not t.policy.retries(webhooks.WebhookRefused("private"))
    assert t.policy.retries(webhooks.WebhookRetry("503"))
    assert t.policy.retries(webhooks.WebhookNotConfigured("no secret"))
    assert t.timeout_seconds == 300


def test_the_backoff_comes_from_the_settings() -> None:
    before = webhooks._settings
    try:
        webhooks.configure(load_settings(webhook_backoff_base_seconds=0.5,
                                         webhook_backoff_cap_seconds=3))
        assert all(0 <= webhooks.backoff(1) <= 0.5 for _ in range(50))
        assert all(0 <= webhooks.backoff(10) <= 3 for _ in range(50))
        assert max(webhooks.backoff(10) for _ in range(200)) > 0.5
    finally:
        webhooks._settings = before
