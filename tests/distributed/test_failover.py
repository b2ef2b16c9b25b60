"""Failover (`jobq chaos 15`) as part of the suite: a primary of its own and its synchronous
standby on this machine, jobq on both by a multi-host URL, the primary stopped hard under load
and the standby promoted. About 35 s.

It never touches the machine's PostgreSQL beyond two throw-away databases (the campaign's
ledger lives there), so it is not behind JOBQ_CHAOS; it needs the server programs (initdb,
pg_ctl, pg_basebackup) and is skipped without them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobq.chaos.campaigns.failover import PROGRAMS
from jobq.harness import missing_programs

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.mark.timeout(300)
def test_failover_to_the_synchronous_standby_loses_nothing_and_needs_no_restart(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = missing_programs(PROGRAMS)
    if missing:
        pytest.skip(f"no PostgreSQL server programs ({', '.join(missing)})")
    admin = os.environ.get("JOBQ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBQ_")}
    proc = subprocess.run(
        [sys.executable, "-m", "jobq", "chaos", "15", "--pg-url", admin, "--out", str(tmp_path),
         "--timeout", "240"],
        env=env, capture_output=True, text=True, timeout=280,
    )
    with capsys.disabled():  # the figures belong in the log
        print("\n" + proc.stdout)
        if proc.returncode:
            print(proc.stderr[-3000:])
    lines = proc.stdout.splitlines()
    assert any("unavailability" in line and line.endswith("PASS") for line in lines), \
        "the failover did not run"
    assert proc.returncode == 0, "\n".join(line for line in lines if line.endswith("FAIL"))
