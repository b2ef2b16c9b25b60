"""Chains and groups: graphs of jobs built on ``depends_on``, enqueued in one batch.

``chain(a, b, c)`` runs each after the previous one is done; ``group([a, b], then=c)`` runs
``a`` and ``b`` at once and ``c`` once both are final, whatever became of them (a chord: ``c``
reads their states and results in ``ctx.parents``). Parts nest: a chain of groups, a group of
chains. The result is a ``Flow``: a list of job specs whose ``depends_on_items`` link them,
which ``enqueue_many`` (of ``jobq.connect()``, ``jobq.Client``, or ``POST /jobs/batch``) takes
as it is, all or nothing. There is no second engine: the store sees only dependencies.

    q.enqueue_many(chain(step("fetch", {"url": u}), step("parse"), step("store")))
    q.enqueue_many(group([step("resize", {"n": i}) for i in range(100)],
                         then=step("zip")))
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Union


@dataclass(frozen=True)
class Step:
    """One job of a flow: ``enqueue``'s arguments."""

    task_type: str
    payload: Any = None
    options: dict[str, Any] = field(default_factory=dict)

    def spec(self) -> dict[str, Any]:
        return {"task_type": self.task_type, "payload": self.payload, **self.options}


def step(task_type: str, payload: Any = None, **options: Any) -> Step:
    """A job of a chain or group: ``step("resize", {"id": 7}, queue="images")``; ``options``
    are ``enqueue``'s (queue, priority, max_attempts, timeout_seconds, callback_url, …)."""
    if "depends_on_items" in options:
        raise ValueError("step: the flow sets depends_on_items itself")
    return Step(task_type, payload, dict(options))


@dataclass(frozen=True)
class Flow(Sequence[dict[str, Any]]):
    """Job specs linked by ``depends_on_items``; ``heads`` are the items that wait for
    nothing inside the flow, ``tails`` those nothing inside it waits for (what a following
    part of a chain waits for)."""

    specs: tuple[dict[str, Any], ...]
    heads: tuple[int, ...]
    tails: tuple[int, ...]

    def __getitem__(self, index: Any) -> Any:
        return self.specs[index]

    def __len__(self) -> int:
        return len(self.specs)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.specs)

    def _after(self, items: Sequence[int], offset: int, **extra: Any) -> Flow:
        """This flow placed at ``offset`` in a batch, its heads waiting for ``items``."""
        specs = []
        for i, spec in enumerate(self.specs):
            own = [offset + k for k in spec.get("depends_on_items", ())]
            if i in self.heads:
                own = [*items, *own]
                spec = {**spec, **extra}
            specs.append({**spec, "depends_on_items": own} if own else dict(spec))
        return Flow(tuple(specs), tuple(offset + h for h in self.heads),
                    tuple(offset + t for t in self.tails))


Part = Union[Step, Flow]


def _flow(part: Part) -> Flow:
    if isinstance(part, Flow):
        return part
    if isinstance(part, Step):
        return Flow((part.spec(),), (0,), (0,))
    raise TypeError(f"a chain or group is made of steps and flows, not {type(part).__name__}")


def chain(*parts: Part, on_parent_failure: str | None = None) -> Flow:
    """Each part after the previous one is done (all of its tails, for a group). A failed or
    cancelled step cancels the rest, unless ``on_parent_failure="run"``. A step reads the one
    before's result as ``ctx.parent_result``."""
    if not parts:
        raise ValueError("chain: give at least one step")
    specs: list[dict[str, Any]] = []
    heads: tuple[int, ...] = ()
    tails: tuple[int, ...] = ()
    extra = {"on_parent_failure": on_parent_failure} if on_parent_failure else {}
    for n, part in enumerate(parts):
        placed = _flow(part)._after(list(tails), len(specs), **(extra if n else {}))
        specs.extend(placed.specs)
        heads = heads or placed.heads
        tails = placed.tails
    return Flow(tuple(specs), heads, tails)


def group(parts: Iterable[Part], then: Part | None = None) -> Flow:
    """The parts side by side; with ``then``, that runs once every part is final, whatever
    became of each (``on_parent_failure="run"``), with their states and results in
    ``ctx.parents``."""
    specs: list[dict[str, Any]] = []
    heads: list[int] = []
    tails: list[int] = []
    for part in parts:
        placed = _flow(part)._after([], len(specs))
        specs.extend(placed.specs)
        heads.extend(placed.heads)
        tails.extend(placed.tails)
    if not specs:
        raise ValueError("group: give at least one step")
    members = Flow(tuple(specs), tuple(heads), tuple(tails))
    if then is None:
        return members
    callback = _flow(then)._after(list(tails), len(specs), on_parent_failure="run")
    return Flow((*specs, *callback.specs), members.heads, callback.tails)
