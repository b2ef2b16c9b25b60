"""Templates and the headers of every dashboard page.

Autoescape is on for every template and no template marks user data ``|safe``: payloads,
results, errors and tracebacks reach the page as text. The Content-Security-Policy also
allows only the package's own script and style files, so markup that did slip through could
still not run a script.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from jobq.dashboard.session import Viewer, set_cookie

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    # Pages show live data and hold CSRF tokens: never from a cache.
    "Cache-Control": "no-store",
}

env = Environment(
    loader=PackageLoader("jobq.dashboard", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def as_json(value: Any) -> str:
    """A payload or result as indented JSON text (escaped by the template, like all text)."""
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(value)


def when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


def extra_fields(obj: Any, known: set[str]) -> list[tuple[str, Any]]:
    """A dataclass's fields other than ``known``: what later versions add (a queue's limits,
    say) is shown without this dashboard knowing of it."""
    if not dataclasses.is_dataclass(obj):
        return []
    return [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)
            if f.name not in known and not f.name.startswith("_")]


env.filters.update(json=as_json, when=when, age=age)
env.globals.update(extra_fields=extra_fields, getattr=getattr)


#: What a redirect after an action may say it did (``?notice=``): only these texts, never
#: text from the request.
NOTICES = {
    "retried": "Job retried.", "cancelled": "Job cancelled.",
    "paused": "Queue paused.", "resumed": "Queue resumed.",
    "retried-all": "Failed jobs retried: {n}.",
}


def _notice(request: Request) -> str | None:
    text = NOTICES.get(request.query_params.get("notice", ""))
    n = request.query_params.get("n", "")
    return None if text is None else text.format(n=n if n.isdigit() else "?")


def _here(request: Request) -> str:
    """This page's path and query, less the notice: where an action's form comes back to."""
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in ("notice", "n")]
    return request.url.path + ("?" + urlencode(kept) if kept else "")


def page(request: Request, viewer: Viewer | None, template: str, status: int = 200,
         **context: Any) -> HTMLResponse:
    html = env.get_template(template).render(
        viewer=viewer, path=request.url.path, here=_here(request), nav=NAV,
        notice=_notice(request), **context)
    response = HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
    if viewer is not None and viewer.new_cookie:
        set_cookie(request, response, viewer.cookie, token=False)
    return response


NAV = [
    ("/dashboard", "Overview"),
    ("/dashboard/jobs", "Jobs"),
    ("/dashboard/failed", "Failed"),
    ("/dashboard/queues", "Queues"),
    ("/dashboard/schedules", "Schedules"),
    ("/dashboard/workers", "Workers"),
]


# -- the throughput chart: inline SVG, drawn here, no chart library ---------------------------

CHART_W, CHART_H, PAD = 720, 160, 24


def chart(buckets: list[tuple[int, int]]) -> dict[str, Any]:
    """Bars for done (stacked under) failed per minute, in SVG coordinates."""
    n = max(len(buckets), 1)
    top = max([d + f for d, f in buckets] + [1])
    slot = (CHART_W - 2 * PAD) / n
    inner = CHART_H - 2 * PAD
    bars = []
    for i, (done, failed) in enumerate(buckets):
        x = PAD + i * slot
        h_done = inner * done / top
        h_failed = inner * failed / top
        bars.append({
            "x": round(x + 1, 1), "w": round(max(slot - 2, 1), 1),
            "done_y": round(CHART_H - PAD - h_done, 1), "done_h": round(h_done, 1),
            "failed_y": round(CHART_H - PAD - h_done - h_failed, 1),
            "failed_h": round(h_failed, 1),
            "title": f"{n - 1 - i} min ago: {done} done, {failed} failed",
        })
    return {"w": CHART_W, "h": CHART_H, "pad": PAD, "top": top, "bars": bars,
            "done": sum(d for d, _ in buckets), "failed": sum(f for _, f in buckets)}
