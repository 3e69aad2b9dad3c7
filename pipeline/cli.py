"""flashpipe's command line: parsing, exit codes, printing. No business logic lives here."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from pipeline.catalog import channel_of
from pipeline.errors import FlashpipeError, JobBusy, RowsFailed, StoreError, UsageError
from pipeline.spec import JobSpec, load_spec

EPILOG = (
    "exit codes: 0 done, 2 usage/job file, 3 budget, 4 provider refused, 5 store,"
    " 6 provider unreachable (resumable), 7 done but over limits.max_failed_share of rows failed,"
    " 130 interrupted"
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flashpipe",
        description="Push millions of rows through cheap, fast LLM APIs into DuckDB.",
        epilog=EPILOG,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def db(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--db", help="store file (default: [store] path, $FLASHPIPE_DB, flashpipe.duckdb)"
        )

    run = sub.add_parser("run", help="run or resume a job file")
    run.add_argument("job", help="job file (TOML)")
    run.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a job-file key"
    )
    run.add_argument("--sim", action="store_true", help="start the embedded simulator and use it")
    run.add_argument("--sim-profile", default="clean", choices=["clean", "realistic", "hostile"])
    run.add_argument(
        "--restart", action="store_true", help="discard the job's stored results first"
    )
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.add_argument("--no-cache", action="store_true", help="neither reuse nor keep answers")
    run.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run the online lane on Ray workers (no ADDRESS: start Ray on this machine)",
    )
    run.add_argument("--workers", type=int, default=None, help="Ray worker actors (with --ray)")
    db(run)

    resume = sub.add_parser("resume", help="resume a job from the spec stored in the store")
    resume.add_argument("name")
    resume.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    resume.add_argument("--sim", action="store_true")
    resume.add_argument("--sim-profile", default="clean", choices=["clean", "realistic", "hostile"])
    resume.add_argument("--quiet", action="store_true")
    resume.add_argument("--no-cache", action="store_true", help="neither reuse nor keep answers")
    db(resume)

    status = sub.add_parser(
        "status", help="state, rows by status, rate, spend (works while running)"
    )
    status.add_argument("name", nargs="?")
    status.add_argument("--json", action="store_true")
    db(status)

    est = sub.add_parser("estimate", help="predict requests, tokens, USD and time from a sample")
    est.add_argument("job")
    est.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    est.add_argument("--json", action="store_true")

    cost = sub.add_parser("cost", help="spend by job, model, outcome and token kind")
    cost.add_argument("name", nargs="?")
    cost.add_argument("--json", action="store_true")
    db(cost)

    query = sub.add_parser("query", help="run SQL against the store")
    query.add_argument("sql")
    query.add_argument("--json", action="store_true", help="one JSON object per row")
    db(query)

    results = sub.add_parser("results", help="export a job's results")
    results.add_argument("name")
    results.add_argument("--format", choices=["jsonl", "parquet", "csv"], default="jsonl")
    results.add_argument("-o", "--output", required=True)
    results.add_argument(
        "--status", action="append", choices=["ok", "blocked", "failed", "invalid"]
    )
    db(results)

    retry = sub.add_parser("retry", help="re-queue a job's rows with these statuses")
    retry.add_argument("name")
    retry.add_argument("--status", action="append", choices=["failed", "blocked", "invalid"])
    retry.add_argument(
        "--changed", action="store_true", help="rows whose input changed since they were stored"
    )
    db(retry)

    ui = sub.add_parser("ui", help="a local web page of the store's jobs, rows and costs")
    ui.add_argument("--port", type=int, default=8642, help="port on 127.0.0.1 (0: any free)")
    db(ui)

    report = sub.add_parser("report", help="write a job's page as one self-contained HTML file")
    report.add_argument("name")
    report.add_argument("-o", "--output", required=True)
    db(report)

    sim = sub.add_parser("sim", help="serve the provider simulator", add_help=False)
    sim.add_argument("sim_args", nargs=argparse.REMAINDER)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["sim"]:
        from pipeline.sim import main as sim_main

        return int(sim_main(args_list[1:]))
    parser = _parser()
    args = parser.parse_args(args_list)
    logging.basicConfig(level=os.environ.get("FLASHPIPE_LOG", "WARNING").upper())
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": cmd_run,
        "resume": cmd_resume,
        "status": cmd_status,
        "estimate": cmd_estimate,
        "cost": cmd_cost,
        "query": cmd_query,
        "results": cmd_results,
        "retry": cmd_retry,
        "ui": cmd_ui,
        "report": cmd_report,
    }
    try:
        return commands[args.command](args)
    except FlashpipeError as exc:
        print(f"flashpipe: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("flashpipe: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line for the user, the traceback on request
        if os.environ.get("FLASHPIPE_DEBUG"):
            raise
        print(
            f"flashpipe: internal error ({type(exc).__name__}: {exc}); "
            "set FLASHPIPE_DEBUG=1 for the traceback and please report it",
            file=sys.stderr,
        )
        return 1


# -- run / resume -------------------------------------------------------------------------------
def _anyio_run(fn: Callable[[], Any]) -> Any:
    import anyio

    try:
        import uvloop  # noqa: F401

        options = {"use_uvloop": True}
    except ImportError:
        options = {}
    return anyio.run(fn, backend="asyncio", backend_options=options)


def _execute(spec: JobSpec, args: argparse.Namespace, restart: bool) -> int:
    from pipeline.progress import ProgressReporter
    from pipeline.run.engine import run_job
    from pipeline.simproc import SimProcess
    from pipeline.store import resolve_path

    db_path = resolve_path(args.db, spec.store_path)
    progress = ProgressReporter(quiet=args.quiet)
    sim: SimProcess | None = None
    api_key = None
    scratch = tempfile.TemporaryDirectory(prefix="flashpipe-sim-")
    if args.sim:
        sim = SimProcess(["--profile", args.sim_profile]).start()
        p = spec.provider
        # priced as the channel of the real base URL, whatever the simulator's address
        channel = channel_of(p.api, p.base_url, p.channel)
        overrides = [f'provider.base_url="{sim.base_url(p.api)}"', f'provider.channel="{channel}"']
        if p.api == "vertex":  # a throwaway service account whose token endpoint is the sim's
            creds = sim.service_account(Path(scratch.name) / "sa.json", p.project or "sim")
            overrides.append(f'provider.credentials_file="{creds}"')
        if p.lane in ("batch", "auto"):  # the simulator's batches take seconds
            overrides += ["batch.poll_seconds=0.25", "batch.max_poll_seconds=1"]
        spec = load_spec(document=orjson.loads(spec.raw), overrides=overrides)
        api_key = sim.key
    try:
        summary = _anyio_run(
            lambda: run_job(spec, db_path, api_key=api_key, restart=restart, progress=progress)
        )
    finally:
        if sim is not None:
            sim.stop()
        scratch.cleanup()
    rows = ", ".join(f"{k} {v:,}" for k, v in sorted(summary.rows.items())) or "nothing new"
    print(
        f"job {summary.job!r}: {summary.state} - this run stored {rows} in {summary.elapsed_s:.1f} s,"
        f" {summary.requests:,} requests, ${summary.usd.quantize(_SIX)}"
    )
    if summary.ray:
        r = summary.ray
        per = r["leases"] / r["sent"] if r["sent"] else 0.0
        print(
            f"ray: {r['workers']} workers ({r['deaths']} lost), {r['leases']:,} broker leases"
            f" for {r['sent']:,} requests ({per:.3f} per request)"
        )
    print(f"results: flashpipe query 'SELECT * FROM {summary.view} LIMIT 10' --db {db_path}")
    _check_failed(spec, summary.job, summary.rows, db_path)
    return 0


def _check_failed(spec: JobSpec, job: str, rows: dict[str, int], db_path: str) -> None:
    """A job whose rows failed is not silently done: say so with the next command, and exit 7
    when more than limits.max_failed_share of the rows this run stored failed."""
    failed = rows.get("failed", 0)
    if not failed:
        return
    stored = sum(rows.values())
    again = (
        f"`flashpipe retry {job} --status failed --db {db_path}`"
        f" then `flashpipe resume {job} --db {db_path}`"
    )
    why = (
        f"`flashpipe query \"SELECT error, count(*) FROM results WHERE job = '{job}'"
        f" AND status = 'failed' GROUP BY 1\" --db {db_path}`"
    )
    share = spec.limits.max_failed_share
    if failed > share * stored:
        raise RowsFailed(
            f"job {job!r} ran to its end but {failed:,} of the {stored:,} rows this run stored"
            f" failed (over limits.max_failed_share = {share:g}); why: {why}; send them again: {again}"
        )
    print(f"{failed:,} rows failed; why: {why}; send them again: {again}")


def cmd_run(args: argparse.Namespace) -> int:
    overrides = list(args.set) + (["cache=false"] if args.no_cache else [])
    if args.ray is not None:
        overrides += ['engine.kind="ray"', f"engine.address={orjson.dumps(args.ray).decode()}"]
    if args.workers is not None:
        if args.ray is None:
            raise UsageError("--workers needs --ray")
        overrides.append(f"engine.workers={args.workers}")
    spec = load_spec(args.job, overrides)
    return _execute(spec, args, args.restart)


def cmd_resume(args: argparse.Namespace) -> int:
    from pipeline.store import Store, resolve_path

    db_path = resolve_path(args.db)
    store = Store(db_path, read_only=True)
    try:
        row = store.job_row(args.name)
    finally:
        store.close()
    if row is None:
        raise UsageError(f"no job named {args.name!r} in {db_path!r}")
    doc = orjson.loads(row["spec"])["doc"]
    spec = load_spec(document=doc, overrides=args.set + (["cache=false"] if args.no_cache else []))
    args.db = db_path
    return _execute(spec, args, restart=False)


# -- reading the store ------------------------------------------------------------------------
_SIX = __import__("decimal").Decimal("0.000001")


def _open_read(db: str | None) -> Any:
    from pipeline.store import Store, resolve_path

    return Store(resolve_path(db), read_only=True)


def cmd_status(args: argparse.Namespace) -> int:
    from pipeline.reports import status_report
    from pipeline.run.job import status_path
    from pipeline.store import resolve_path

    db_path = resolve_path(args.db)
    try:
        store = _open_read(args.db)
    except StoreError:
        snap_file = status_path(db_path)
        if not snap_file.exists():
            raise
        snap = orjson.loads(snap_file.read_bytes())
        if args.json:
            print(orjson.dumps({"live": snap}).decode())
        else:
            from pipeline.progress import format_line

            print(f"running ({snap.get('runner')}): {format_line(snap)}")
        return 0
    try:
        report = status_report(store, args.name)
    finally:
        store.close()
    if args.json:
        print(orjson.dumps(report).decode())
        return 0
    if not report["jobs"]:
        print(f"no jobs in {db_path}")
    for j in report["jobs"]:
        counts = ", ".join(f"{k} {v:,}" for k, v in sorted(j["by_status"].items())) or "no rows yet"
        line = f"{j['name']}: {j['state']} | {j['rows']:,} rows ({counts}) | {j['requests']:,} requests"
        line += (
            f" | 429s {j['rate_limited']} | ${j['usd']} | rows paid twice {j['rows_paid_twice']}"
        )
        if j["message"]:
            line += f" | {j['message']}"
        print(line)
        if j["cache"]["rows"]:
            print(f"  {_from_cache(j['cache'])}")
        if j["changed_rows"]:
            print(
                f"  {j['changed_rows']:,} stored rows no longer match the input;"
                f" `flashpipe retry {j['name']} --changed` re-queues them"
            )
        for pool, pt in j["pools"].items():
            rate = f"{pt['requests_per_min']:,} rpm" if pt["requests_per_min"] else "-"
            print(
                f"  pool {pool}: {pt['calls']:,} calls, {rate}, 429s {pt['rate_limited']}, ${pt['usd']}"
            )
        if j["lanes"] and (len(j["lanes"]) > 1 or "standard" not in j["lanes"]):
            lanes = ", ".join(
                f"{k} {v['rows']:,} rows ${v['usd']}" for k, v in sorted(j["lanes"].items())
            )
            print(f"  lanes: {lanes}")
        for b in j["batches"]:
            where = b["provider_name"] or "not submitted"
            done = f", {b['ok_rows']:,} ok, {b['retry_rows']:,} sent again" if b["closed"] else ""
            print(f"  batch {b['batch_id']} ({where}): {b['state']}, {b['rows']:,} rows{done}")
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    from pipeline.reports import cost_report

    store = _open_read(args.db)
    try:
        report = cost_report(store, args.name)
    finally:
        store.close()
    if args.json:
        print(orjson.dumps(report).decode())
        return 0
    for j in report["jobs"]:
        t = j["tokens"]
        u = j["usd"]
        print(
            f"{j['name']} ({j['model']}): ${u['total']} for {j['requests']:,} requests, {j['rows']:,} rows"
        )
        print(
            f"  tokens: input {t['input']:,}, cached {t['cached']:,}, output {t['output']:,},"
            f" thinking {t['thinking']:,}"
        )
        if "input" in u:
            print(f"  usd: input ${u['input']}, output+thinking ${u['output']}")
        if "prices_per_m" in j:
            pm = j["prices_per_m"]
            print(f"  prices: ${pm['input']}/M in, ${pm['output']}/M out ({pm['source']})")
        bo = u["by_outcome"]
        cache = f", context cache ${bo['context_cache']}" if "context_cache" in bo else ""
        print(
            f"  by outcome: ok ${bo['ok']}, retried ${bo['retried']}{cache},"
            f" thrown away ${bo['thrown_away']}"
        )
        for lane, lt in sorted(j["lanes"].items()):
            shed = ""
            if "shed" in lt:
                shed = f", {lt['shed']['calls']:,} refused by Flex (${lt['shed']['usd']})"
            print(
                f"  {lane} lane: ${lt['usd']} for {lt['rows']:,} rows, {lt['calls']:,} calls{shed}"
            )
        for pool, pt in j.get("pools", {}).items():
            print(f"  pool {pool}: ${pt['usd']} for {pt['calls']:,} calls")
        if j["rows_paid_twice"]:
            print(f"  rows paid twice: {j['rows_paid_twice']}")
        if j["cache"]["rows"]:
            print(f"  {_from_cache(j['cache'])}")
        if len(j["models"]) > 1:
            for model, m in j["models"].items():
                print(
                    f"  {model}: ${m['usd']} for {m['calls']:,} calls, answered {m['rows']:,} rows"
                )
    print(f"total: ${report['total_usd']}")
    return 0


def _from_cache(cache: dict[str, Any]) -> str:
    return f"{cache['rows']:,} rows from cache, ${cache['saved_usd']} saved"


def cmd_query(args: argparse.Namespace) -> int:
    store = _open_read(args.db)
    try:
        table = store.query_arrow(args.sql)
    finally:
        store.close()
    rows = table.to_pylist()
    if args.json:
        for r in rows:
            print(orjson.dumps(r, default=str).decode())
        return 0
    print(_format_table(table.column_names, rows))
    return 0


def _format_table(names: list[str], rows: list[dict[str, Any]], limit: int = 200) -> str:
    cells = [[_cell(r[n]) for n in names] for r in rows[:limit]]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    out = [" | ".join(n.ljust(w) for n, w in zip(names, widths, strict=True))]
    out.append("-+-".join("-" * w for w in widths))
    out += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    if len(rows) > limit:
        out.append(f"... {len(rows) - limit} more rows (use --json for all)")
    return "\n".join(out)


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def cmd_results(args: argparse.Namespace) -> int:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from pipeline.files import open_output
    from pipeline.reports import job_names
    from pipeline.store import view_name

    store = _open_read(args.db)
    try:
        job_names(store, args.name)
        where = ""
        if args.status:
            where = " WHERE status IN (" + ", ".join(f"'{s}'" for s in args.status) + ")"
        table = store.query_arrow(f'SELECT * FROM "{view_name(args.name)}"{where} ORDER BY row_id')
    finally:
        store.close()
    try:  # a local path or s3:// / gs:// through the same filesystem layer as the inputs
        with open_output(args.output) as fh:
            if args.format == "parquet":
                pq.write_table(table, fh)
            elif args.format == "csv":
                flat = table.select(
                    [
                        c
                        for c in table.column_names
                        if not str(table.schema.field(c).type).startswith(("list", "struct"))
                    ]
                )
                pacsv.write_csv(flat, fh)
            else:
                for r in table.to_pylist():
                    fh.write(orjson.dumps(r, default=str) + b"\n")
    except OSError as exc:
        raise UsageError(f"-o {args.output}: cannot write ({exc.strerror or exc})") from None
    print(f"wrote {table.num_rows:,} rows to {args.output}")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from pipeline.reports import job_names
    from pipeline.store import Store, resolve_path

    try:
        store = Store(resolve_path(args.db))
    except JobBusy as exc:
        raise StoreError(str(exc)) from None
    try:
        job_names(store, args.name)
        n = 0
        if args.changed:
            from pipeline.changed import changed_rows, stored_job

            n += store.requeue_rows(args.name, changed_rows(store, stored_job(store, args.name)))
        if args.status or not args.changed:
            n += store.requeue(args.name, args.status or ["failed"])
    finally:
        store.close()
    print(f"re-queued {n:,} rows of {args.name!r}; `flashpipe resume {args.name}` sends them")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib

    from pipeline.store import resolve_path
    from pipeline.ui.app import serve

    db_path = resolve_path(args.db)

    def ready(address: str) -> None:
        print(f"flashpipe ui: {address} (store {db_path}, read-only; Ctrl-C stops)", flush=True)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a user stops it
        asyncio.run(serve(db_path, args.port, ready))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.store import resolve_path
    from pipeline.ui.app import render_report

    db_path = resolve_path(args.db)
    page = render_report(db_path, args.name)
    try:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(page)
    except OSError as exc:
        raise UsageError(f"-o {args.output}: cannot write ({exc.strerror})") from None
    print(f"wrote the page of {args.name!r} to {args.output} ({len(page.encode()):,} bytes)")
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from pipeline.estimate import estimate, format_estimate

    spec = load_spec(args.job, args.set)
    report = estimate(spec)
    print(orjson.dumps(report).decode() if args.json else format_estimate(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
