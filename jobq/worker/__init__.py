"""The worker: a fetcher that claims only what it can run now, an executor that turns a job into
an Outcome without touching SQL, a completer that persists each Outcome with one guarded store
call, and the heartbeat and rescue loops that keep leases honest."""

from jobq.worker.runner import Worker, run_worker

__all__ = ["Worker", "run_worker"]
