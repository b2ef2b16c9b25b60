"""`jobq bench`, the project's own benchmark (see ``runner``): options, throw-away databases,
the phases (enqueue, drain and growth, pickup), the REST load generator, and the report."""

from jobq.bench.options import PHASES, Options
from jobq.bench.runner import run

__all__ = ["PHASES", "Options", "run"]
