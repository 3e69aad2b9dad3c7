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
