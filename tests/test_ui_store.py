"""The pages behind `flashpipe ui` without a browser: bound filters, a store left untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pipeline.store import Store
from pipeline.ui import app
from pipeline.ui.rows import RowFilter
from tests.million import JOB, make_store


@pytest.fixture
def small_db(tmp_path: Path) -> Path:
    return make_store(tmp_path / "small.duckdb", rows=3000)


def test_filter_values_are_bound_parameters_not_sql(small_db: Path) -> None:
    page = app.render_rows(str(small_db), JOB, RowFilter(column="label", value="x' OR '1'='1"))
    assert 'class="row"' not in page and "no rows match" in page
    quoted = app.render_rows(str(small_db), JOB, RowFilter(q="'; DROP TABLE results; --"))
    assert 'class="row"' not in quoted


def test_a_filter_column_outside_the_view_is_ignored(small_db: Path) -> None:
    hostile = RowFilter(column="label = label OR 1=1; DROP TABLE results; --", value="bug")
    page = app.render_rows(str(small_db), JOB, hostile)
    assert page.count('class="row"') == 50  # the first page, unfiltered


def test_rendering_every_page_leaves_the_store_file_unchanged_and_free(small_db: Path) -> None:
    before = hashlib.sha256(small_db.read_bytes()).hexdigest()
    path = str(small_db)
    app.render_jobs(path)
    app.render_job(path, JOB)
    app.render_rows(path, JOB, RowFilter(status="failed", q="500"))
    app.render_row(path, JOB, "M-0000004")
    app.render_errors(path, JOB)
    assert hashlib.sha256(small_db.read_bytes()).hexdigest() == before
    Store(path).close()  # a writer (a run) can take the file right after: nothing holds it


def test_report_of_an_unknown_job_is_a_usage_error(small_db: Path) -> None:
    from pipeline.errors import UsageError

    with pytest.raises(UsageError, match="no job named 'nope'"):
        app.render_report(str(small_db), "nope")
