"""Partitions by the kernel (`jobq chaos 13` and `14`) as part of the suite: API replicas and
workers on hosts of their own (network namespaces), a PostgreSQL server of the campaigns' own
in the root namespace, iptables DROP at both ends. About a minute.

They never touch the machine's PostgreSQL (their server is their own), so they are not behind
JOBQ_CHAOS. They need root, iptables and the PostgreSQL server programs: skipped without
them, a failure when JOBQ_REQUIRE_POSTGRES=1 (CI, which installs iptables).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobq.harness import missing_programs, netns

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _why_not() -> str | None:
    why = netns.available()
    if why is not None:
        return why
    missing = missing_programs(("initdb", "pg_ctl"))
    return f"no PostgreSQL server programs {', '.join(missing)}" if missing else None


@pytest.mark.timeout(600)
@pytest.mark.parametrize("campaign, figure", [("13", "long cut: takeover"),
                                              ("14", "in-transaction cut: takeover")])
def test_partitions_take_nothing_away_but_the_lease_allows(
    campaign: str, figure: str, pg_url: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    why = _why_not()
    if why is not None:
        if os.environ.get("JOBQ_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"campaign {campaign} cannot run here: {why}")
        pytest.skip(why)
    admin = os.environ.get("JOBQ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBQ_")}
    proc = subprocess.run(
        [sys.executable, "-m", "jobq", "chaos", campaign, "--reduced", "--pg-url", admin,
         "--out", str(tmp_path), "--timeout", "300"],
        env=env, capture_output=True, text=True, timeout=560,
    )
    with capsys.disabled():  # the figures belong in the log
        print("\n" + proc.stdout)
        if proc.returncode:
            print(proc.stderr[-3000:])
    lines = proc.stdout.splitlines()
    assert any(line.strip().startswith(figure) and line.endswith("PASS") for line in lines), \
        f"campaign {campaign} did not measure a takeover"
    assert proc.returncode == 0, "\n".join(line for line in lines if line.endswith("FAIL"))
