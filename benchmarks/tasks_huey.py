"""Huey's SqliteHuey and no-op task (``huey_consumer tasks_huey.huey``); WAL and
synchronous=FULL like jobq's SQLite. Huey's tasks are sync; its "complete" signal, sent in the
worker after the task ran, records the finish time the same way the start is recorded."""

import os

from huey import SqliteHuey
from huey.signals import SIGNAL_COMPLETE

from stamps import stamp

huey = SqliteHuey("bench", filename=os.environ.get("BENCH_HUEY_DB", "huey.db"),
                  journal_mode="wal", fsync=True)


@huey.task()
def cmp_noop(k):
    stamp(k)


@huey.signal(SIGNAL_COMPLETE)
def _done(signal, task, *args, **kwargs):
    stamp(task.args[0] if task.args else "?", kind="done")
