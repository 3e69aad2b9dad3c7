"""The `flashpipe ui` web app (aiohttp) and the `flashpipe report` file.

Each request opens the store read-only and closes it before answering: a DuckDB file has one
writer or many readers, so a connection held between requests would stop `flashpipe run` from
starting. While a run holds the file, the Jobs page shows the run's status sidecar instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

from aiohttp import web

from pipeline.errors import StoreError, UsageError
from pipeline.store import Store
from pipeline.ui import jobs, pages, rows

log = logging.getLogger(__name__)
T = TypeVar("T")
HOST = "127.0.0.1"


class NotFound(Exception):
    pass


class Busy(Exception):
    pass


def _read(db_path: str, fn: Callable[[Store], T]) -> T:
    try:
        store = Store(db_path, read_only=True)
    except StoreError as exc:
        if "busy" in str(exc):
            raise Busy(str(exc)) from None
        raise
    try:
        return fn(store)
    finally:
        store.close()


def render_jobs(db_path: str) -> str:
    try:
        found = _read(db_path, jobs.summaries)
    except Busy as exc:
        snap = jobs.read_sidecar(db_path)
        if snap is None:
            return pages.message_page("Store busy", str(exc), refresh=2)
        note = (
            f"a run ({snap.get('runner', 'another process')}) holds the store: live progress from"
            " its status file; the other jobs and the job pages return when it finishes"
        )
        return pages.jobs_page([jobs.live_summary(snap)], db_path, note)
    return pages.jobs_page(found, db_path, None)


def _job(store: Store, name: str) -> None:
    if store.job_row(name) is None:
        raise NotFound(f"no job named {name!r} in this store")


def render_job(db_path: str, name: str, *, links: bool = True) -> str:
    def build(store: Store) -> str:
        _job(store, name)
        return pages.job_page(jobs.detail(store, name), db_path, links=links)

    return _read(db_path, build)


def render_rows(db_path: str, name: str, f: rows.RowFilter) -> str:
    def build(store: Store) -> str:
        _job(store, name)
        source = rows.input_source(jobs.job_spec(store, name), db_path)
        return pages.rows_page(name, rows.rows_page(store, name, f, source), f)

    return _read(db_path, build)


def render_row(db_path: str, name: str, row_id: str) -> str:
    def build(store: Store) -> str:
        _job(store, name)
        source = rows.input_source(jobs.job_spec(store, name), db_path)
        detail = rows.row_detail(store, name, row_id, source)
        if detail is None:
            raise NotFound(f"no row {row_id!r} in job {name!r}")
        return pages.row_page(name, detail)

    return _read(db_path, build)


def render_errors(db_path: str, name: str) -> str:
    def build(store: Store) -> str:
        _job(store, name)
        return pages.errors_page(name, rows.error_groups(store, name), db_path)

    return _read(db_path, build)


def render_report(db_path: str, name: str) -> str:
    """The job page as one self-contained file: no links back to a server, no network."""
    try:
        return render_job(db_path, name, links=False)
    except NotFound as exc:
        raise UsageError(str(exc)) from None
    except Busy as exc:
        raise StoreError(str(exc)) from None


def _filter(q: web.Request) -> rows.RowFilter:
    p = q.query
    return rows.RowFilter(
        status=p.get("status") or None,
        column=p.get("col") or None,
        value=p.get("val"),
        q=p.get("q") or None,
        after=p.get("after"),
        before=p.get("before"),
    )


def make_app(db_path: str) -> web.Application:
    async def page(render: Callable[[], str]) -> web.Response:
        try:
            body = await asyncio.to_thread(render)
            status = 200
        except NotFound as exc:
            body, status = pages.message_page("Not found", str(exc)), 404
        except Busy as exc:
            text = f"{exc}. This page shows once the run lets go of the store."
            body, status = pages.message_page("A run holds the store", text, refresh=2), 503
        except StoreError as exc:
            body, status = pages.message_page("Store unavailable", str(exc)), 500
        return web.Response(
            text=body,
            status=status,
            content_type="text/html",
            headers={"Content-Security-Policy": pages.CSP, "X-Content-Type-Options": "nosniff"},
        )

    async def index(request: web.Request) -> web.Response:
        return await page(lambda: render_jobs(db_path))

    async def job(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return await page(lambda: render_job(db_path, name))

    async def job_rows(request: web.Request) -> web.Response:
        name, f = request.match_info["name"], _filter(request)
        return await page(lambda: render_rows(db_path, name, f))

    async def row(request: web.Request) -> web.Response:
        name, row_id = request.match_info["name"], request.query.get("id", "")
        return await page(lambda: render_row(db_path, name, row_id))

    async def errors(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return await page(lambda: render_errors(db_path, name))

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/jobs/{name}", job)
    app.router.add_get("/jobs/{name}/rows", job_rows)
    app.router.add_get("/jobs/{name}/row", row)
    app.router.add_get("/jobs/{name}/errors", errors)
    return app


async def serve(db_path: str, port: int, on_ready: Callable[[str], None]) -> None:
    """Serve until cancelled; `on_ready` gets the URL once the socket listens."""
    runner = web.AppRunner(make_app(db_path), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, port)
        try:
            await site.start()
        except OSError as exc:
            raise UsageError(f"--port {port}: cannot listen on {HOST} ({exc.strerror})") from None
        bound = runner.addresses[0][1] if runner.addresses else port
        on_ready(f"http://{HOST}:{bound}/")
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
