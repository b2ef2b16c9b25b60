"""jobq's no-op tasks (JOBQ_TASKS=tasks_jobq): an async one and a sync (``def``) one."""

from jobq import task

from stamps import stamp


@task("cmp_noop", max_attempts=1)
async def cmp_noop(payload):
    stamp(payload["k"])


@task("cmp_noop_sync", max_attempts=1)
def cmp_noop_sync(payload):
    stamp(payload["k"])
