"""`make bench`: run every bench (or `--only NAME[,NAME]`), write results.md, print a summary.

Exit status is 0 when every bench ran (targets missed or not); 1 when a bench crashed.
"""

from __future__ import annotations

import argparse
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from tests.bench import limiter, reuse, scale, speed, state, ui
from tests.bench.report import Section, summary, write

RESULTS = Path(__file__).resolve().parent / "results.md"

# name, title, function; order = report order
BENCHES: list[tuple[str, str, Callable[[Section], None]]] = [
    ("sim", "1. Simulator speed", speed.bench_sim),
    ("throughput", "2. Throughput vs the naive stack (50,000 rows, clean)", speed.bench_throughput),
    ("latency", "3. Throughput at 200 ms latency", speed.bench_latency),
    (
        "ratelimit",
        "4. Rate-limit utilization (realistic, 100 ms, rpm 6000, auto)",
        state.bench_ratelimit,
    ),
    ("rpm", "5. RPM windows (issue 4)", state.bench_rpm_windows),
    ("memory", "6. Memory flatness (peak RSS of the flashpipe process)", state.bench_memory),
    ("store", "7. Store write rate", state.bench_store),
    ("resume", "8. Resume start", state.bench_resume),
    ("packing", "9. Packing (5,000 rows)", speed.bench_packing),
    ("estimate", "10. Estimate", speed.bench_estimate),
    ("peers", "11. Peers", speed.bench_peers),
    ("limiter", "12. Limiter: aiolimiter vs flashpipe's own", limiter.bench_limiter),
    ("ui", "13. UI: pages of `flashpipe ui` on a 1M-row store", ui.bench_ui),
    ("dedupe", "14. Dedupe (20,000 rows, 60 % repeated texts)", reuse.bench_dedupe),
    (
        "feedback",
        "15. Retries with feedback (2,000 rows, 5 % answered invalidly)",
        reuse.bench_feedback,
    ),
    ("autopack", "16. rows_per_request auto vs fixed packings (demo jobs)", reuse.bench_autopack),
    ("scale", "17. Past one machine: Ray workers and key pools (issue 17)", scale.bench_scale),
]
# mostly idle (a few requests per second): run alongside the others to save wall time
# CPU- or latency-bound: nothing else runs beside them (resume start read 2.28 s beside the
# rpm bench, 1.37-1.63 s alone)
QUIET = {"sim", "throughput", "latency", "resume", "ui", "scale"}
BACKGROUND = {"rpm"}


def _run(sec: Section, fn: Callable[[Section], None]) -> None:
    t0 = time.monotonic()
    try:
        fn(sec)
    except Exception as exc:  # a crashed bench is recorded, the others still run
        sec.error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    sec.seconds = time.monotonic() - t0
    print(f"  done {sec.name} in {sec.seconds:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.run")
    ap.add_argument("--only", default="", help="comma-separated bench names")
    ap.add_argument("--output", default=str(RESULTS))
    args = ap.parse_args(argv)
    names = [n for n, _, _ in BENCHES]
    only = [n.strip() for n in args.only.split(",") if n.strip()] or names
    unknown = sorted(set(only) - set(names))
    if unknown:
        ap.error(f"unknown bench {', '.join(unknown)}; known: {', '.join(names)}")
    chosen = [(n, t, f) for n, t, f in BENCHES if n in only]
    sections = {n: Section(n, t) for n, t, _ in chosen}
    t0 = time.monotonic()
    threads = []

    def run_now(names: set[str] | None, skip: set[str]) -> None:
        for n, _, f in chosen:
            if (names is None or n in names) and n not in skip:
                print(f"running {n} ...", flush=True)
                _run(sections[n], f)

    if len(chosen) == 1:
        run_now(None, set())
    else:
        # the CPU-bound throughput figures run alone first; the slow, rate-limited benches
        # then run in background threads beside the rest
        run_now(QUIET, BACKGROUND)
        for n, _, f in chosen:
            if n in BACKGROUND:
                sections[n].note("ran in a background thread, after the benches that run alone")
                th = threading.Thread(target=_run, args=(sections[n], f), daemon=True)
                th.start()
                threads.append(th)
        run_now(None, QUIET | BACKGROUND)
    for th in threads:
        th.join()
    total = time.monotonic() - t0
    ordered = [sections[n] for n, _, _ in chosen]
    write(Path(args.output), ordered, total)
    print(summary(ordered))
    print(f"total {total:.0f} s; wrote {args.output}")
    return 1 if any(s.error for s in ordered) else 0


if __name__ == "__main__":
    raise SystemExit(main())
