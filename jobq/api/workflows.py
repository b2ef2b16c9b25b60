"""``GET /workflows/{id}``: a graph of jobs linked by ``depends_on``, with each job's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.concurrency import run_in_threadpool
from pydantic import BeforeValidator

from jobq.api.auth import Reader
from jobq.api.models import WorkflowOut
from jobq.api.problems import problem_responses
from jobq.api.routes import MAX_JOB_ID, Service, _operation_id, _plain_digits

workflows = APIRouter(prefix="/workflows", tags=["workflows"],
                      generate_unique_id_function=_operation_id)

WorkflowId = Annotated[int, BeforeValidator(_plain_digits), Path(
    ge=1, le=MAX_JOB_ID, description="The id of any job of the graph.")]


@workflows.get(
    "/{job_id}",
    summary="Get a workflow",
    description=(
        "Every job connected to this one by `depends_on`, either way (its parents, their "
        "parents, its children, …; a chain or a group with its callback), with the state of "
        "each and its parents, and the counts by state. At most 10,000 jobs (`truncated`)."
    ),
    response_model=WorkflowOut,
    responses=problem_responses(401, 403, 404, 422, 429, 503),
)
async def get_workflow(service: Service, caller: Reader, job_id: WorkflowId) -> WorkflowOut:
    graph = await run_in_threadpool(service.workflow, job_id,
                                    allowed_queues=caller.allowed_queues)
    return WorkflowOut.model_validate(graph)
