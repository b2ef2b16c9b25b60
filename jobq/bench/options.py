"""What a run of `jobq bench` measures: its options, its phases, and the one error a phase
may end with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
#: The bench's task module (``jobq/bench/tasks.py``), as the processes it starts load it.
TASKS_MODULE = "jobq.bench.tasks"
NOOP, STAMP = "bench_noop", "bench_stamp"
PHASES = ("enqueue", "drain", "pickup", "growth")
#: Worker concurrency when --concurrency is not given (see README, "Performance").
DEFAULT_CONCURRENCY = 64


class PhaseError(Exception):
    """A phase that could not be measured (timed out, a process died); the others go on."""


@dataclass
class Options:
    dbs: list[str]
    pg_url: str = DEFAULT_PG_URL
    json_out: Path = Path("bench-results.json")
    jobs: int = 20_000  # drain size
    workers: int = 2
    concurrency: list[int] = field(default_factory=lambda: [DEFAULT_CONCURRENCY])
    enqueue_jobs: int = 5_000  # single-job enqueues; batched ones enqueue 10x as many
    batch_sizes: list[int] = field(default_factory=lambda: [100, 1000])
    #: API processes behind the port for the REST figures (`jobq api --processes N`).
    api_processes: list[int] = field(default_factory=lambda: [1, 2])
    clients: int = 32
    pickup_samples: int = 200
    pickup_gap_ms: float = 20.0
    growth_finished: list[int] = field(default_factory=lambda: [100_000, 1_000_000])
    growth_queued: int = 100_000
    phases: list[str] = field(default_factory=lambda: list(PHASES))
    phase_timeout: float = 900.0
    quick: bool = False

    @classmethod
    def quick_preset(cls, **kw: Any) -> Options:
        base = dict(jobs=500, enqueue_jobs=200, batch_sizes=[50], clients=32, pickup_samples=25,
                    growth_finished=[5_000, 20_000], growth_queued=2_000, phase_timeout=60.0,
                    quick=True)
        base.update(kw)
        return cls(**base)  # type: ignore[arg-type]
