"""The printed table: each figure per system and round, and the ratios jobq/peer measured in
the same round, with their spread (min–max over rounds)."""

from __future__ import annotations

from statistics import median
from typing import Any

#: (label, phase, field, higher is better). A peer without the phase (Huey has one drain
#: setting; only jobq runs def handlers) is compared through its "drain_default".
FIGURES = [
    ("drain, defaults: jobs/s", "drain_default", "jobs_per_s", True),
    ("drain, defaults: steady jobs/s", "drain_default", "steady_jobs_per_s", True),
    ("drain, tuned: jobs/s", "drain_tuned", "jobs_per_s", True),
    ("drain, tuned: steady jobs/s", "drain_tuned", "steady_jobs_per_s", True),
    ("drain, def handlers: jobs/s", "drain_sync", "jobs_per_s", True),
    ("drain, def handlers: steady jobs/s", "drain_sync", "steady_jobs_per_s", True),
    ("enqueue, 1 per call: jobs/s", "enqueue_single", "jobs_per_s", True),
    ("enqueue over REST, 1 per request: jobs/s", "enqueue_rest", "jobs_per_s", True),
    ("enqueue, batches of 1000: jobs/s", "drain_default", "batch_enqueue_jobs_per_s", True),
    ("pickup p50 ms", "pickup", "p50_ms", False),
    ("pickup p99 ms", "pickup", "p99_ms", False),
    ("defaults: worker CPU µs/job", "drain_default", "worker_cpu_us_per_job", False),
    ("defaults: PostgreSQL CPU µs/job", "drain_default", "pg_cpu_us_per_job", False),
    ("defaults: transactions/job", "drain_default", "xacts_per_job", False),
    ("defaults: tuples written/job", "drain_default", "tuples_written_per_job", False),
    ("tuned: worker CPU µs/job", "drain_tuned", "worker_cpu_us_per_job", False),
    ("tuned: PostgreSQL CPU µs/job", "drain_tuned", "pg_cpu_us_per_job", False),
    ("tuned: transactions/job", "drain_tuned", "xacts_per_job", False),
    ("tuned: tuples written/job", "drain_tuned", "tuples_written_per_job", False),
]


#: Where each database's ceiling is in the results, and how it was measured.
CEILING = {"postgresql": ("ceiling", "pgbench"), "sqlite": ("ceiling_sqlite", "plain SQL")}


def value(run: dict[str, Any], phase: str, field: str, fallback: bool) -> float | None:
    res = run.get(phase)
    if res is None and fallback and phase.startswith("drain"):
        res = run.get("drain_default")
    return res.get(field) if isinstance(res, dict) else None


def _fmt(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"


def ratios(doc: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """jobq/peer per figure: the per-round ratios, their min, median and max."""
    systems = doc["results"][kind]
    out = []
    for label, phase, field, higher in FIGURES:
        for peer in (s for s in systems if s != "jobq"):
            per_round = []
            for j, p in zip(systems["jobq"], systems[peer]):
                a, b = value(j, phase, field, False), value(p, phase, field, True)
                if a is not None and b:
                    per_round.append(round(a / b, 3))
            if per_round:
                out.append({"figure": label, "peer": peer, "per_round": per_round,
                            "min": min(per_round), "median": median(per_round),
                            "max": max(per_round), "higher_is_better": higher})
    return out


def print_report(doc: dict[str, Any]) -> None:
    print(f"\njobq side by side — {doc['date']}, jobq {doc['jobq_commit']}; "
          + ", ".join(f"{k} {v}" for k, v in doc["versions"].items()))
    print(f"{doc['options']['jobs']:,} jobs per drain, {doc['options']['rounds']} interleaved "
          f"rounds; {doc['machine']}")
    for kind, systems in doc["results"].items():
        print(f"\n== {kind}")
        ceilings = doc.get(CEILING[kind][0]) or []
        print(f"  ceiling ({CEILING[kind][1]}, claim 100 + complete, 2 clients): jobs/s per "
              "round: " + ", ".join(_fmt(x.get("jobs_per_s")) for x in ceilings))
        for name, runs in systems.items():
            for setting, (lbl, _) in doc["settings"][name].items():
                print(f"  {name} {setting}: {lbl}")
        width = max(len(f[0]) for f in FIGURES) + 2
        print(f"\n  {'figure':<{width}}" + "".join(f"{s:>26}" for s in systems))
        for label, phase, field, _ in FIGURES:
            cells = []
            for runs in systems.values():
                vals = [value(r, phase, field, False) for r in runs]
                cells.append(" / ".join(_fmt(v) for v in vals))
            if any(c.strip("–/ ") for c in cells):
                print(f"  {label:<{width}}" + "".join(f"{c:>26}" for c in cells))
        if ceilings:
            print("\n  drain as a fraction of the ceiling (same round):")
            for name, runs in systems.items():
                for phase in ("drain_default", "drain_tuned", "drain_sync"):
                    f = [round(100 * r[phase]["jobs_per_s"] / c["jobs_per_s"], 1)
                         for r, c in zip(runs, ceilings)
                         if isinstance(r.get(phase), dict) and r[phase].get("jobs_per_s")
                         and c.get("jobs_per_s")]
                    if f:
                        print(f"    {name} {phase}: " + ", ".join(f"{x} %" for x in f))
        print("\n  ratios jobq/peer (same round; median [min–max]):")
        for r in ratios(doc, kind):
            better = "higher" if r["higher_is_better"] else "lower"
            print(f"    {r['figure']:<{width}} vs {r['peer']:<14} {r['median']:.2f} "
                  f"[{r['min']:.2f}–{r['max']:.2f}]  ({better} is better for jobq)")
        for name, runs in systems.items():
            for i, run in enumerate(runs):
                for err in run.get("errors", []):
                    print(f"  ! {name} round {i + 1}: {err}")
