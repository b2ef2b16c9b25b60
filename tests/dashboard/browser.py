"""Playwright driving Debian's chromium (/usr/bin/chromium, installed by
scripts/system-packages.sh): never a browser that Playwright downloads itself."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM = "/usr/bin/chromium"


def missing_reason() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing: install Debian's chromium (scripts/system-packages.sh)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e .[test])"
    return None


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless chromium of the system. --no-sandbox: CI runs as root, where chromium's
    sandbox refuses to start."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def watched_page(browser: Any, **context_options: Any) -> Iterator[tuple[Any, list[str]]]:
    """A page in a fresh context, and the list where every console error, uncaught script
    error and failed request of it is written."""
    context = browser.new_context(**context_options)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    # A request the browser itself abandoned (net::ERR_ABORTED: the favicon of a page the test
    # already left) says nothing of the page; a refused or broken one does. (An HTTP error is
    # an answer, not a failed request: it shows as a console error above.)
    page.on("requestfailed", lambda r: None if r.failure == "net::ERR_ABORTED" else
            problems.append(f"request failed: {r.url} ({r.failure})"))
    page.on("dialog", lambda d: d.accept())  # "Retry all N?" answered yes
    try:
        yield page, problems
    finally:
        context.close()
