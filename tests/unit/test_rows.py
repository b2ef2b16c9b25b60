"""Rows become jobs by position (``rows.job_of``): the table's columns must be the Job's
fields, or a claimed job would silently lack one."""

from __future__ import annotations

import dataclasses

from jobq.store.rows import _JOB_COLUMNS
from jobq.types import Job


def test_every_job_field_is_a_column_of_the_jobs_table_and_no_more() -> None:
    fields = [f.name for f in dataclasses.fields(Job)]
    assert fields == [*_JOB_COLUMNS, "attempt_log"]
