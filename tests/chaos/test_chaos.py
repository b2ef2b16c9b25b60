"""The reduced chaos run (campaigns 1-4, 7, 12, 16 and 17) as part of the suite.

It restarts and crashes the PostgreSQL server it is pointed at (campaign 3), so it runs only
when asked: JOBQ_CHAOS=1 (as .ci/run sets it). The full run is `jobq chaos`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.skipif(os.environ.get("JOBQ_CHAOS") != "1",
                       reason="set JOBQ_CHAOS=1 to run the chaos campaigns (they restart "
                       "PostgreSQL)"),
]


@pytest.mark.timeout(1800)
def test_reduced_chaos_run_passes_every_invariant(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = os.environ.get("JOBQ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBQ_")}
    proc = subprocess.run(
        [sys.executable, "-m", "jobq", "chaos", "--reduced", "--pg-url", admin,
         "--out", str(tmp_path), "--timeout", "300"],
        env=env, capture_output=True, text=True, timeout=1750,
    )
    with capsys.disabled():  # the figures belong in the CI log
        print("\n" + proc.stdout)
        if proc.returncode:
            print(proc.stderr[-3000:])
    lines = proc.stdout.splitlines()
    assert any(line.strip().endswith("PASS") for line in lines), "no check ran"
    assert proc.returncode == 0, "\n".join(line for line in lines if line.endswith("FAIL"))
