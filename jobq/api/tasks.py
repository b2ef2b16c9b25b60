"""The registered tasks over HTTP: ``GET /tasks`` lists them with their payload schemas, and
``POST /tasks/{task_type}/jobs`` submits a job of one, which the OpenAPI document spells out
per task, so that a generated client has a typed function for each.

``POST /jobs`` takes any task; its payload is "any JSON value" in the document, since the
task is only known from the body. A task whose handler's payload is a pydantic model
(``jobq.payloads``) is checked against it either way, when the job is submitted. Generated
clients are typed through the per-task paths: ``typed_task_paths`` copies the generic
operation once per such task, as ``submit_<task>`` at ``/tasks/<task>/jobs``, with a request
body whose ``payload`` is the model's schema (added to the document's components).
"""

from __future__ import annotations

import copy
import re
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema, models_json_schema

from jobq import payloads, tracing
from jobq.api.auth import Enqueuer, Reader
from jobq.api.models import EnqueueRequest, JobOut
from jobq.api.problems import problem_responses
from jobq.api.routes import Service, _invalid, _operation_id, _spec, only_query_params
from jobq.errors import InvalidJob
from jobq.registry import TaskRegistry
from jobq.types import NAME_PATTERN

tasks = APIRouter(prefix="/tasks", tags=["tasks"], generate_unique_id_function=_operation_id)

GENERIC_PATH = "/tasks/{task_type}/jobs"

TaskName = Annotated[
    str, Path(pattern=NAME_PATTERN, min_length=1, max_length=128,
              description="A registered task's name.")
]


class TaskOut(BaseModel):
    name: str
    is_async: bool = Field(description="Its handler is an `async def` (else a `def`, run in "
                           "a thread).")
    max_attempts: int = Field(description="Attempts a job of it gets unless it says "
                              "otherwise: the task's, else JOBQ_MAX_ATTEMPTS.")
    payload_schema: dict[str, Any] | None = Field(
        description="The JSON Schema its payloads must match (its handler's pydantic model); "
        "null: any JSON value.")
    schedules: list[str] = Field(description="Its periodic schedules, as `name: expression`.")


class TaskList(BaseModel):
    tasks: list[TaskOut] = Field(description="By name.")


class TaskJobRequest(EnqueueRequest):
    """A new job of the task the path names: the JSON body of ``POST /jobs`` without
    ``task_type``."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"payload": {"to": "ana@example.com"}},
        {"payload": {"to": "ana@example.com"}, "queue": "emails", "idempotency_key": "w-42"},
    ]})

    task_type: SkipJsonSchema[str | None] = None  # type: ignore[assignment]

    @field_validator("task_type", mode="before")
    @classmethod
    def _in_path(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError("the task is named by the path, not the body")
        return value


@tasks.get(
    "",
    summary="List tasks",
    description="Every task the API knows (JOBQ_TASKS and the built-ins), with its payload "
    "schema, attempts and schedules.",
    responses=problem_responses(401, 403, 422, 429, 503),
)
def list_tasks(service: Service, caller: Reader,
               _: Annotated[None, only_query_params()]) -> TaskList:
    registry = service.registry
    by_task: dict[str, list[str]] = {}
    for s in registry.schedules():
        by_task.setdefault(s.task_type, []).append(f"{s.name}: {s.expression}")
    out = []
    for name in registry.names():
        task = registry.get(name)
        out.append(TaskOut(
            name=name, is_async=task.is_async,
            max_attempts=task.max_attempts or service.settings.max_attempts,
            payload_schema=payloads.schema(task.payload_model),
            schedules=by_task.get(name, []),
        ))
    return TaskList(tasks=out)


@tasks.post(
    "/{task_type}/jobs",
    status_code=201,
    summary="Submit a job of a task",
    description="As `POST /jobs` with a JSON body, the task named by the path. The document "
    "lists this operation once more for each task with a payload schema, typed.",
    responses={
        200: {"model": JobOut, "description": "Repeated request: the job it created before."},
        **problem_responses(400, 401, 403, 404, 409, 413, 422, 429, 503),
    },
)
async def submit_task_job(service: Service, caller: Enqueuer, request: Request,
                          response: Response, task_type: TaskName,
                          body: TaskJobRequest) -> JobOut:
    spec = {**_spec(body), "task_type": task_type,
            "trace_context": tracing.request_context(request.headers)}
    try:
        result = await service.enqueue_async(**spec, allowed_queues=caller.allowed_queues)
    except InvalidJob as exc:
        raise _invalid(exc, "body") from None
    if not result.created:
        response.status_code = 200
    return JobOut.model_validate(result.job)


# -- the document -----------------------------------------------------------------------------


def typed_task_paths(document: dict[str, Any], registry: TaskRegistry) -> None:
    """Add ``POST /tasks/<task>/jobs`` (``submit_<task>``) for each task with a payload
    model: the generic operation, with the model as the body's payload."""
    generic = document.get("paths", {}).get(GENERIC_PATH, {}).get("post")
    typed = {n: registry.get(n).payload_model for n in registry.names()}
    typed = {n: m for n, m in typed.items() if m is not None}
    if generic is None or not typed:
        return
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    refs, top = models_json_schema([(m, "validation") for m in set(typed.values())],
                                   ref_template="#/components/schemas/{model}")
    for name, schema in top.get("$defs", {}).items():
        schemas.setdefault(name, schema)
    body = schemas[TaskJobRequest.__name__]
    taken = {op.get("operationId") for item in document["paths"].values()
             for op in item.values() if isinstance(op, dict)}
    for name, model in sorted(typed.items()):
        ident = re.sub(r"\W", "_", name)
        op_id = f"submit_{ident}"
        while op_id in taken:
            op_id += "_"
        taken.add(op_id)
        body_name = f"{ident}_job"
        typed_body = copy.deepcopy(body)
        typed_body["title"] = body_name
        typed_body["properties"]["payload"] = {**refs[(model, "validation")],
                                               "description": f"The payload of {name}."}
        if model.model_json_schema().get("required"):
            typed_body["required"] = sorted({*typed_body.get("required", []), "payload"})
        schemas[body_name] = typed_body
        op = copy.deepcopy(generic)
        op["operationId"] = op_id
        op["summary"] = f"Submit a {name} job"
        op["description"] = f"`POST /jobs` for task `{name}`, its payload typed."
        op["parameters"] = [p for p in op.get("parameters", []) if p.get("name") != "task_type"]
        if not op["parameters"]:
            del op["parameters"]
        op["requestBody"]["content"]["application/json"]["schema"] = {
            "$ref": f"#/components/schemas/{body_name}"}
        document["paths"][f"/tasks/{name}/jobs"] = {"post": op}
