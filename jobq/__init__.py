"""jobq: a fault-tolerant, SQL-backed background job system."""

from jobq.registry import JobContext, task

__all__ = ["task", "JobContext"]
__version__ = "0.1.0"
