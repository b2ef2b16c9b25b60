"""The dashboard's pages (GET): overview, jobs, one job, failed jobs, queues, schedules,
workers. Each reads through JobService with the viewer's queues, as the REST API does.

Fields that later versions add to Job or QueueInfo (progress, tags, meta, limits, parents,
children) are read with getattr, so the pages show them once they exist."""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.datastructures import QueryParams

from jobq.dashboard.render import chart
from jobq.dashboard.views import BadInput, show
from jobq.dashboard.session import Viewer
from jobq.service import JobService
from jobq.types import JobState

pages = APIRouter(prefix="/dashboard", include_in_schema=False)

PAGE_SIZE = 50
STATES = [s.value for s in JobState]
MAX_FILTER = 255


def _filters(params: QueryParams, names: tuple[str, ...]) -> dict[str, str | None]:
    unknown = sorted(set(params) - set(names) - {"cursor", "notice", "n"})
    if unknown:
        raise BadInput(f"unknown filter: {', '.join(unknown)}")
    got: dict[str, str | None] = {}
    for name in names:
        value = (params.get(name) or "").strip()
        if len(value) > MAX_FILTER:
            raise BadInput(f"{name}: at most {MAX_FILTER} characters")
        got[name] = value or None
    if got.get("state") is not None and got["state"] not in STATES:
        raise BadInput(f"state: one of {', '.join(STATES)}")
    return got


def _supports_tags(service: JobService) -> bool:
    # GET /jobs?tag= arrives with job tags (issue 14); until then the filter is not offered.
    return "tag" in inspect.signature(service.list_jobs).parameters


def _list(service: JobService, who: Viewer, params: QueryParams,
          fixed_state: str | None = None) -> dict[str, Any]:
    tags = _supports_tags(service)
    names = ("queue", "task", "tag") if fixed_state else ("state", "queue", "task", "tag")
    f = _filters(params, names)
    options: dict[str, Any] = {}
    if tags and f["tag"]:
        options["tag"] = f["tag"]
    elif f["tag"]:
        raise BadInput("tag: this version of jobq has no job tags")
    state = fixed_state or f.get("state")
    result = service.list_jobs(
        state=JobState(state) if state else None, queue=f["queue"], task_type=f["task"],
        limit=PAGE_SIZE, cursor=params.get("cursor") or None,
        allowed_queues=who.allowed, **options)
    query = {k: v for k, v in f.items() if v}
    return {"jobs": result.items, "next_cursor": result.next_cursor, "filters": f,
            "cursor": params.get("cursor"),
            "query": query, "states": STATES, "tags_supported": tags,
            "tasks": sorted(service.registry.names())}


@pages.get("")
async def overview(request: Request) -> Response:
    def build(who: Viewer, service: JobService) -> tuple[str, dict[str, Any]]:
        allowed = sorted(who.allowed) if who.allowed is not None else None
        stats = service.stats(allowed_queues=who.allowed)
        return "overview.html", {
            "stats": stats, "chart": chart(service.store.throughput(60, queues=allowed)),
            "oldest": service.store.oldest_waiting(queues=allowed),
        }
    return await show(request, build)


@pages.get("/jobs")
async def job_list(request: Request) -> Response:
    def build(who: Viewer, service: JobService) -> tuple[str, dict[str, Any]]:
        return "jobs.html", _list(service, who, request.query_params)
    return await show(request, build)


@pages.get("/failed")
async def failed(request: Request) -> Response:
    def build(who: Viewer, service: JobService) -> tuple[str, dict[str, Any]]:
        context = _list(service, who, request.query_params, fixed_state="failed")
        f = context["filters"]
        context["matching"] = service.count_matching(
            states=["failed"], queue=f["queue"], task_type=f["task"],
            allowed_queues=who.allowed)
        return "failed.html", context
    return await show(request, build)


@pages.get("/jobs/{job_id}")
async def job(request: Request, job_id: str) -> Response:
    def build(who: Viewer, service: JobService) -> tuple[str, dict[str, Any]]:
        if not (job_id.isascii() and job_id.isdigit()) or not 1 <= int(job_id) < 2**63:
            raise BadInput("a job's id is a positive integer")
        j = service.get(int(job_id), allowed_queues=who.allowed)
        parents, children = service.relatives(j.id)
        return "job.html", {"job": j, "final": JobState(j.state).is_final,
                            "parents": parents, "children": children}
    return await show(request, build)


@pages.get("/queues")
async def queue_list(request: Request) -> Response:
    def build(who: Viewer, service: JobService) -> tuple[str, dict[str, Any]]:
        return "queues.html", {"queues": service.list_queues(allowed_queues=who.allowed),
                               "states": STATES}
    return await show(request, build)


@pages.get("/schedules")
async def schedules(request: Request) -> Response:
    def build(who: Viewer, service: JobService) -> tuple[str, dict[str, Any]]:
        return "schedules.html", {
            "schedules": service.list_schedules(allowed_queues=who.allowed)}
    return await show(request, build)


@pages.get("/workers")
async def worker_list(request: Request) -> Response:
    def build(who: Viewer, service: JobService) -> tuple[str, dict[str, Any]]:
        return "workers.html", {"workers": service.stats(allowed_queues=who.allowed).workers}
    return await show(request, build)
