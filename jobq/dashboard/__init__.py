"""The web dashboard at /dashboard: server-rendered pages (Jinja2, autoescaped) with one small
script, every asset shipped in this package (it works offline, with no build step).

``install_dashboard(app)`` adds it to the API app. The pages read through JobService with the
viewer's queues; sessions and CSRF: ``session.py``; pages: ``pages.py``; actions (POST):
``actions.py``; templates and the chart: ``render.py``."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from jobq.dashboard.actions import actions
from jobq.dashboard.pages import pages
from jobq.dashboard.render import SECURITY_HEADERS, page
from jobq.dashboard.session import LoginNeeded, viewer
from jobq.dashboard.views import to_login


async def not_found(request: Request, rest: str) -> Response:
    """Any other path under /dashboard: a 404 page (an HTML one, for a browser)."""
    if rest == "":
        return RedirectResponse("/dashboard", status_code=303, headers=SECURITY_HEADERS)
    try:
        who = await viewer(request)
    except LoginNeeded as exc:
        return to_login(request, exc.reason)
    return page(request, who, "error.html", 404, title="Not found",
                detail="the dashboard has no such page")


def install_dashboard(app: FastAPI) -> None:
    # The static files first: the catch-all below would otherwise answer for them.
    app.mount("/dashboard/static", StaticFiles(packages=[("jobq.dashboard", "static")]),
              name="dashboard-static")
    app.include_router(pages)
    app.include_router(actions)
    app.add_api_route("/dashboard/{rest:path}", not_found, methods=["GET"],
                      include_in_schema=False)


__all__ = ["install_dashboard"]
