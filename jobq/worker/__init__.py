"""The worker, made of parts that each answer one question:

- ``fetcher``:     when to claim jobs and how many (never more than the free slots)
- ``executor``:    a job's handler run, its result or error turned into an Outcome (no SQL)
- ``completer``:   the outbox: outcomes written in fenced batches
- ``heartbeat``:   leases kept, lost ones taken away from their handlers
- ``maintenance``: rescue of expired leases (the rescuer) and pruning
- ``slots``:       the state they share: running jobs and the outbox
- ``loop``, ``db``: the shape of every loop; how the store's blocking calls are made
- ``worker``:      the parts composed, start and graceful stop
"""

from jobq.worker.worker import Worker, configure_logging, new_worker_id, run_worker

__all__ = ["Worker", "configure_logging", "new_worker_id", "run_worker"]
