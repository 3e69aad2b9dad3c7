"""Paying once: requests and USD saved by dedupe on a duplicate-heavy input."""

from __future__ import annotations

import random
from pathlib import Path

import orjson

from pipeline.simproc import SimProcess
from tests.bench import data, measure
from tests.bench.report import Section


def tickets_with_repeats(n: int, repeat: float, seed: int = 11) -> Path:
    """n ticket rows where `repeat` of them copy the text of an earlier row (a feed that
    repeats itself: comments, ticket subjects, product titles)."""
    path = data.data_dir() / f"tickets_repeat{int(repeat * 100)}_{n}.jsonl"
    if not path.exists():
        rng = random.Random(seed)
        texts: list[str] = []
        with path.open("wb") as fh:
            for row in data._rows(0, n):
                if texts and rng.random() < repeat:
                    row["text"] = texts[rng.randrange(len(texts))]
                else:
                    texts.append(row["text"])
                fh.write(orjson.dumps(row) + b"\n")
    return path


def bench_dedupe(sec: Section, rows: int = 20_000, repeat: float = 0.6) -> None:
    src = tickets_with_repeats(rows, repeat)
    distinct = len({orjson.loads(line)["text"] for line in src.read_bytes().splitlines()})
    figures: dict[bool, tuple[int, float, float]] = {}
    with SimProcess([]) as sim:
        for dedupe in (False, True):
            name = f"dedupe-{'on' if dedupe else 'off'}"
            doc = data.job_doc(name, src, sim.base_url("gemini"), concurrency=64)
            doc["dedupe"] = dedupe
            # the answer cache off in both: it would answer repeats whose first answer is
            # already stored, and the figure is dedupe's alone
            doc["cache"] = False
            db = measure.fresh_db(name)
            p = measure.run_job(doc, db)
            ((calls, usd, done),) = measure.query(
                db,
                "SELECT (SELECT count(*) FROM calls WHERE job = $1),"
                " (SELECT sum(cost_usd) FROM calls WHERE job = $1),"
                " (SELECT count(*) FROM results WHERE job = $1)",
                name,
            )
            assert done == rows, f"{name}: {done} of {rows} rows stored"
            figures[dedupe] = (int(calls), float(usd), p.elapsed_s)
    (c_off, u_off, t_off), (c_on, u_on, t_on) = figures[False], figures[True]
    sec.add(
        f"requests, {rows:,} rows with {repeat:.0%} repeated texts",
        f"{c_on:,} (dedupe on)",
        f"{c_off:,} (dedupe off)",
        c_on / c_off,
        f"= {distinct:,} distinct texts",
        c_on == distinct,
    )
    sec.add("USD, same job", f"${u_on:.6f}", f"${u_off:.6f}", u_on / u_off, "< 1", u_on < u_off)
    sec.note(
        f"dedupe on: {c_on:,} requests, ${u_on:.6f}, {t_on:.1f} s; off: {c_off:,} requests,"
        f" ${u_off:.6f}, {t_off:.1f} s; saved {c_off - c_on:,} requests and ${u_off - u_on:.6f}"
    )


def bench_feedback(sec: Section, rows: int = 2_000, stubborn: float = 0.05) -> None:
    """Rows the simulator answers with a label not in the list until told why (5 %)."""
    path = data.data_dir() / f"tickets_stubborn{int(stubborn * 100)}_{rows}.jsonl"
    every = round(1 / stubborn)
    with path.open("wb") as fh:
        for i, row in enumerate(data._rows(0, rows)):
            if i % every == 0:
                row["text"] += " [[sim:stubborn_enum]]"
            fh.write(orjson.dumps(row) + b"\n")
    figures: dict[bool, tuple[int, int, int, float]] = {}
    with SimProcess([]) as sim:
        for feedback in (False, True):
            name = f"feedback-{'on' if feedback else 'off'}"
            doc = data.job_doc(name, path, sim.base_url("gemini"), concurrency=64)
            doc["limits"]["retry_feedback"] = feedback
            doc["cache"] = False
            db = measure.fresh_db(name)
            measure.run_job(doc, db)
            ((calls, tokens, usd),) = measure.query(
                db,
                "SELECT count(*), sum(input_tokens + cached_tokens + output_tokens"
                " + thinking_tokens), sum(cost_usd) FROM calls WHERE job = ?",
                name,
            )
            ok = measure.status_counts(db, name).get("ok", 0)
            figures[feedback] = (int(calls), int(tokens), ok, float(usd))
    (c_off, t_off, ok_off, u_off), (c_on, t_on, ok_on, u_on) = figures[False], figures[True]
    sec.add(f"rows ok of {rows:,}", f"{ok_on:,} (feedback)", f"{ok_off:,} (plain re-send)")
    sec.lines[-1].passed = ok_on == rows
    sec.lines[-1].target = "every row"
    sec.add("requests", f"{c_on:,}", f"{c_off:,}", c_on / c_off, "fewer", c_on < c_off)
    sec.add("tokens billed", f"{t_on:,}", f"{t_off:,}", t_on / t_off, "fewer", t_on < t_off)
    sec.note(
        f"{stubborn:.0%} of the rows carry the simulator's stubborn_enum marker (a bad label on"
        f" every send until the request says why it was rejected); max_attempts 6;"
        f" USD ${u_on:.6f} with feedback, ${u_off:.6f} with plain re-sends"
    )


DEMO_JOBS = ("classify_tickets", "moderate_comments", "translate_products", "custom_extract")


def bench_autopack(sec: Section) -> None:
    """rows_per_request = "auto" against fixed packings on the demo jobs (simulator cost)."""
    root = Path(__file__).resolve().parents[2]
    fixed = (1, 10, 25, 50)
    with SimProcess([]) as sim:
        for job in DEMO_JOBS:
            usd: dict[str, float] = {}
            for per in (*fixed, "auto"):
                name = f"autopack-{job}-{per}"
                db = measure.fresh_db(name)
                p = measure.flashpipe(
                    "run",
                    str(root / "jobs" / f"{job}.toml"),
                    "--set",
                    f"name={name}",
                    "--set",
                    f'provider.base_url="{sim.base_url("gemini")}"',
                    "--set",
                    f"limits.rows_per_request={per}",
                    "--no-cache",
                    "--quiet",
                    "--db",
                    str(db),
                )
                if p.code != 0:
                    raise RuntimeError(f"{name} exited {p.code}: {p.stderr.strip()[-500:]}")
                ((cost, calls),) = measure.query(
                    db, "SELECT sum(cost_usd), count(*) FROM calls WHERE job = ?", name
                )
                usd[str(per)] = float(cost)
                if per == "auto":
                    sec.note(f"{job}: auto sent {calls} requests")
            cheapest = min(usd[str(n)] for n in fixed)
            best = min(fixed, key=lambda n: usd[str(n)])
            sec.add(
                f"{job}: USD with auto vs the cheapest fixed packing ({best})",
                f"${usd['auto']:.6f}",
                f"${cheapest:.6f}",
                usd["auto"] / cheapest,
                "within 10 %",
                usd["auto"] <= cheapest * 1.10,
            )
            sec.note(f"{job}: " + ", ".join(f"{k}: ${v:.6f}" for k, v in usd.items()))
