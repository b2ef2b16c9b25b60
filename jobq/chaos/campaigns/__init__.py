"""The fault campaigns, numbered as the README's table and `jobq chaos N` name them.

Each campaign gets fresh databases, starts real processes, applies its faults, drains, and
returns its checks. Figures are printed by ``runner.py``.
"""

from __future__ import annotations

from jobq.chaos.campaigns.database import database_faults, pool_exhaustion
from jobq.chaos.campaigns.failover import failover
from jobq.chaos.campaigns.jobs import baseline, heartbeats, poison_pills, retry_storm, skewed_clocks
from jobq.chaos.campaigns.limits import limits_under_kills
from jobq.chaos.campaigns.network import partition_in_transaction, partitions
from jobq.chaos.campaigns.schedules import periodic_kills
from jobq.chaos.campaigns.workflows import workflows_under_kills
from jobq.chaos.campaigns.processes import (
    api_kills,
    sigterm_drain,
    sqlite_kills,
    worker_kills,
    zombies,
)
# The runner and its callers import these from here, as they did from the one module.
from jobq.chaos.checks import Check
from jobq.chaos.setup import Campaign, Ctx

CAMPAIGNS: dict[str, Campaign] = {
    "1": baseline,
    "2": worker_kills,
    "3": database_faults,
    "4": api_kills,
    "5": zombies,
    "6": sigterm_drain,
    "7": poison_pills,
    "8": retry_storm,
    "9": heartbeats,
    "10": skewed_clocks,
    "11": pool_exhaustion,
    "12": sqlite_kills,
    "13": partitions,
    "14": partition_in_transaction,
    "15": failover,
    "16": periodic_kills,
    "17": limits_under_kills,
    "18": workflows_under_kills,
}
#: The reduced run that CI does.
REDUCED = ["1", "2", "3", "4", "7", "12", "16", "17", "18"]

__all__ = [
    "CAMPAIGNS", "REDUCED", "Campaign", "Check", "Ctx",
    "baseline", "worker_kills", "database_faults", "api_kills", "zombies", "sigterm_drain",
    "poison_pills", "retry_storm", "heartbeats", "skewed_clocks", "pool_exhaustion",
    "sqlite_kills", "partitions", "partition_in_transaction", "failover", "periodic_kills",
    "limits_under_kills", "workflows_under_kills",
]
