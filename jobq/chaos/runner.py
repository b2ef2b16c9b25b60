"""`jobq chaos`: run fault campaigns, each in its own process under a hard timeout, and print
one line per invariant with its figure and PASS or FAIL."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from jobq.chaos.campaigns import CAMPAIGNS, REDUCED, Check, Ctx


def run_one(number: str, admin_url: str, out_dir: Path, reduced: bool, seed: int) -> list[Check]:
    ctx = Ctx(admin_url, out_dir, reduced, seed, random.Random(seed))
    try:
        return CAMPAIGNS[number](ctx)
    except Exception as exc:  # noqa: BLE001 - a campaign that breaks is a failed campaign
        return [Check("campaign", f"crashed: {type(exc).__name__}: {exc}", False)]


def _kill_leftovers(run_dir: Path) -> None:
    for pids in run_dir.glob("*/pids.txt"):
        for line in pids.read_text().split():
            try:
                os.killpg(int(line), signal.SIGCONT)
                os.killpg(int(line), signal.SIGKILL)
            except (ProcessLookupError, PermissionError, ValueError):
                pass
        pids.unlink()  # done with: never signal these numbers again, they may be reused


def run(numbers: list[str], admin_url: str, out_dir: Path | None, reduced: bool,
        timeout: float, seed: int | None) -> int:
    out = out_dir or Path(tempfile.mkdtemp(prefix="jobq-chaos-"))
    out.mkdir(parents=True, exist_ok=True)
    seed = seed if seed is not None else random.randrange(1 << 30)
    print(f"jobq chaos: campaigns {' '.join(numbers)} ({'reduced' if reduced else 'full'}), "
          f"seed {seed}, logs in {out}", flush=True)
    failed = 0
    for number in numbers:
        began = time.monotonic()
        doc = CAMPAIGNS[number].__doc__ or ""
        print(f"\n[{number}] {doc.strip().splitlines()[0]}", flush=True)
        cmd = [sys.executable, "-m", "jobq.chaos.runner", number, admin_url, str(out),
               "1" if reduced else "0", str(seed)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            try:
                checks = [Check(**c) for c in json.loads(proc.stdout.strip().splitlines()[-1])]
            except (ValueError, IndexError, TypeError):
                checks = [Check("campaign", f"exited {proc.returncode}: "
                                f"{(proc.stderr or proc.stdout)[-800:]}", False)]
        except subprocess.TimeoutExpired:
            checks = [Check("campaign", f"timed out after {timeout:.0f}s", False)]
        finally:
            _kill_leftovers(out)
        for c in checks:
            verdict = "SKIP" if c.name == "skipped" else "PASS" if c.ok else "FAIL"
            print(f"  {c.name:<22} {c.figure:<90} {verdict}", flush=True)
            failed += not c.ok
        print(f"  ({time.monotonic() - began:.0f}s)", flush=True)
    print(f"\n{'ALL PASS' if not failed else f'{failed} FAIL'}", flush=True)
    return 1 if failed else 0


def default_numbers(reduced: bool) -> list[str]:
    return list(REDUCED) if reduced else list(CAMPAIGNS)


if __name__ == "__main__":
    # Child mode: one campaign; its checks as JSON on the last line of stdout.
    number, admin_url, out_dir, reduced, seed = sys.argv[1:6]
    result = run_one(number, admin_url, Path(out_dir), reduced == "1", int(seed))
    print(json.dumps([asdict(c) for c in result]))
