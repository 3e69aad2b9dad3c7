"""`flashpipe ui` and `flashpipe report` in a real headless Chromium, over real stores.

One browser, one demo store (the jobs/ files run against the simulator, plus a job whose rows
are hostile HTML) and one million-row store are shared by the module. Screenshots of the main
pages land in tests/_screenshots/ (not committed) for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from pipeline.simproc import SimProcess
from pipeline.spec import load_spec
from tests.million import JOB as MILLION
from tests.million import make_store
from tests.support import (
    ROOT,
    job_file,
    run_cli,
    run_sync,
    sql,
    start_run,
    ticket_rows,
    wait_for_rows,
    write_jsonl,
)

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (dev extra)"
)
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if (CHROMIUM is None or DRIVER is None) and os.environ.get("CI"):
    # CI installs both (.ci/run): a browser test skipped there would be a silent pass
    pytest.fail("Chromium or chromedriver missing in CI; .ci/run installs them", pytrace=False)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="needs Chromium and its driver: apt-get install -y chromium chromium-driver",
)
SHOTS = Path(os.environ.get("FLASHPIPE_SCREENSHOTS", ROOT / "tests" / "_screenshots"))
# no outside network here: keep Chromium from phoning home
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
]
HOSTILE = [
    "<script>window.__pwned = 'script'</script>",
    "<img src=x onerror=\"window.__pwned = 'img'\">",
    "</textarea><script>window.__pwned = 'textarea'</script>",
]
DEMO_JOBS = {
    "tickets-demo",
    "tickets-demo-openai",
    "tickets-extract-demo",
    "comments-demo",
    "products-de-demo",
}


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(executable_path=str(DRIVER)), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def shoot(driver: Any, name: str) -> None:
    """A full-page screenshot (beyond the viewport, through DevTools) for a person to look at."""
    import base64

    SHOTS.mkdir(parents=True, exist_ok=True)
    width, height = driver.execute_script(
        "const e = document.documentElement; return [e.scrollWidth, e.scrollHeight]"
    )
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": min(height, 8000), "scale": 1},
        },
    )
    (SHOTS / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every job file of jobs/ (and the Batch lane once) against one simulator, plus hostile rows."""
    tmp = tmp_path_factory.mktemp("demo")
    db = tmp / "demo.duckdb"
    sim = SimProcess(["--latency-ms", "5"]).start()
    try:
        for path in sorted((ROOT / "jobs").glob("*.toml")):
            api = load_spec(path).provider.api
            spec = load_spec(path, [f'provider.base_url="{sim.base_url(api)}"', "limits.rpm=0"])
            run_sync(spec, db, key=sim.key)
        batch = load_spec(
            ROOT / "jobs" / "classify_tickets.toml",
            [
                f'provider.base_url="{sim.base_url("gemini")}"',
                'name="tickets-batch"',
                'provider.lane="batch"',
                "cache=false",  # the same tickets as the demo job: the cache would answer all
                "batch.poll_seconds=0.25",
                "batch.max_poll_seconds=1",
            ],
        )
        run_sync(batch, db, key=sim.key)
        rows = [{"id": f"H-{i}", "text": t, "lang": t} for i, t in enumerate(HOSTILE)]
        rows.append({"id": HOSTILE[1], "text": HOSTILE[0], "lang": "x"})
        src = write_jsonl(tmp / "hostile.jsonl", rows)
        hostile = load_spec(
            document={
                "name": "hostile",
                "task": "classify",
                "model": "gemini-3.1-flash-lite-preview",
                "input": {"path": str(src), "id": "id", "keep": ["lang"]},
                "provider": {"base_url": sim.base_url("gemini")},
                "limits": {"rpm": 0},
                "classify": {"labels": ["billing", "bug", "other"]},
            }
        )
        run_sync(hostile, db, key=sim.key)
    finally:
        sim.stop()
    return db


class Ui:
    """`flashpipe ui --port 0` as a user starts it; the URL comes from its first line."""

    def __init__(self, db: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "ui", "--db", str(db), "--port", "0"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
        assert match, (
            f"no address in {line!r}: {self.proc.stderr.read() if self.proc.stderr else ''}"
        )
        self.base = match.group(1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def demo_ui(demo_db: Path) -> Iterator[Ui]:
    ui = Ui(demo_db)
    yield ui
    ui.stop()


@pytest.fixture(scope="module")
def million_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("million") / "million.duckdb")


@pytest.fixture(scope="module")
def million_ui(million_db: Path) -> Iterator[Ui]:
    ui = Ui(million_db)
    yield ui
    ui.stop()


def job_url(ui: Ui, job: str, sub: str = "") -> str:
    return f"{ui.base}/jobs/{quote(job, safe='')}{sub}"


def cells(driver: Any, column: str) -> list[str]:
    """The texts of one column of the rows table, by its header."""
    heads = [h.text for h in driver.find_elements(By.CSS_SELECTOR, "#rows tr th")]
    i = heads.index(column) + 1
    return [
        c.text for c in driver.find_elements(By.CSS_SELECTOR, f"#rows tr.row td:nth-child({i})")
    ]


# -- the demo store ---------------------------------------------------------------------------
def test_jobs_page_lists_the_demo_jobs(browser: Any, demo_ui: Ui) -> None:
    browser.get(demo_ui.base + "/")
    listed = {r.get_attribute("data-job") for r in browser.find_elements(By.CSS_SELECTOR, "tr.job")}
    assert DEMO_JOBS | {"tickets-batch", "hostile"} <= listed
    row = browser.find_element(By.CSS_SELECTOR, "tr.job[data-job='tickets-demo']")
    assert "300 / 300" in row.text and "done" in row.text and "$" in row.text
    shoot(browser, "jobs")


def test_job_page_charts_have_drawn_marks_that_add_up(browser: Any, demo_ui: Ui) -> None:
    browser.get(job_url(demo_ui, "tickets-demo"))
    marks = browser.find_elements(By.CSS_SELECTOR, "svg.chart rect.mark")
    assert len(marks) > 10 and all(m.size["width"] > 0 for m in marks[:5])
    label_chart = browser.find_elements(By.CSS_SELECTOR, ".card")[0]
    titles = [
        t.get_attribute("textContent")
        for t in label_chart.find_elements(By.CSS_SELECTOR, "rect.mark title")
    ]
    counts = {t.split(":")[0]: int(t.split(":")[1].replace(",", "")) for t in titles}
    stored = dict(
        sql(browser_db(demo_ui), "SELECT label, count(*) FROM results_tickets_demo GROUP BY 1")
    )
    assert counts == stored and sum(counts.values()) == 300
    shoot(browser, "job-tickets")
    for job, name in (("comments-demo", "job-moderate"), ("products-de-demo", "job-translate")):
        browser.get(job_url(demo_ui, job))
        assert browser.find_elements(By.CSS_SELECTOR, ".card:first-child rect.mark")
        shoot(browser, name)
    browser.get(job_url(demo_ui, "tickets-extract-demo"))
    heads = [h.text for h in browser.find_elements(By.CSS_SELECTOR, ".card h2")]
    assert "Top values of needs_reply" in heads and "Top values of urgency" in heads
    browser.get(job_url(demo_ui, "tickets-batch"))
    assert browser.find_elements(By.CSS_SELECTOR, "#batches tr td")
    shoot(browser, "job-batch")


def browser_db(ui: Ui) -> Path:
    args = ui.proc.args
    assert isinstance(args, list)
    return Path(args[args.index("--db") + 1])


def test_label_filter_narrows_the_rows(browser: Any, demo_ui: Ui) -> None:
    browser.get(job_url(demo_ui, "tickets-demo", "/rows"))
    everything = len(browser.find_elements(By.CSS_SELECTOR, "#rows tr.row"))
    browser.find_element(By.CSS_SELECTOR, "select[name=col] option[value=label]").click()
    browser.find_element(By.NAME, "val").send_keys("bug")
    browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
    WebDriverWait(browser, 10).until(lambda d: "val=bug" in d.current_url)
    labels = cells(browser, "label")
    (bugs,) = sql(
        browser_db(demo_ui), "SELECT count(*) FROM results_tickets_demo WHERE label = 'bug'"
    )[0]
    assert everything == 50 and 0 < len(labels) == min(50, bugs) and set(labels) == {"bug"}
    shoot(browser, "rows-filtered")


def test_row_page_shows_its_text_answer_and_calls(browser: Any, demo_ui: Ui) -> None:
    browser.get(job_url(demo_ui, "tickets-demo", "/rows"))
    browser.find_element(By.CSS_SELECTOR, "#rows tr.row td a").click()
    WebDriverWait(browser, 10).until(lambda d: "/row?id=" in d.current_url)
    row_id = browser.find_element(By.CSS_SELECTOR, "#row-facts td").text
    db = browser_db(demo_ui)
    (calls,) = sql(
        db,
        "SELECT count(*) FROM calls WHERE job = 'tickets-demo' AND list_contains(row_ids, ?)",
        row_id,
    )[0]
    (output,) = sql(
        db, "SELECT output FROM results WHERE job = 'tickets-demo' AND row_id = ?", row_id
    )[0]
    assert calls >= 1 and len(browser.find_elements(By.CSS_SELECTOR, "#calls tr.call")) == calls
    assert json.loads(browser.find_element(By.ID, "answer").text) == json.loads(output)
    text = browser.find_element(By.ID, "input-text").get_attribute("value")
    source = [
        json.loads(line) for line in (ROOT / "data" / "tickets.jsonl").read_text().splitlines()
    ]
    assert text == next(r["text"] for r in source if r["id"] == row_id)
    shoot(browser, "row")


def test_hostile_rows_render_as_text_and_run_nothing(browser: Any, demo_ui: Ui) -> None:
    browser.get(job_url(demo_ui, "hostile", "/rows"))
    assert set(cells(browser, "lang")) >= set(HOSTILE)
    assert browser.find_elements(By.CSS_SELECTOR, "main img") == []
    for row_id, text in [
        ("H-0", HOSTILE[0]),
        ("H-1", HOSTILE[1]),
        ("H-2", HOSTILE[2]),
        (HOSTILE[1], HOSTILE[0]),
    ]:
        browser.get(job_url(demo_ui, "hostile", "/row?id=" + quote(row_id, safe="")))
        assert browser.find_element(By.ID, "input-text").get_attribute("value") == text
        assert browser.find_element(By.CSS_SELECTOR, "#row-facts td").text == row_id
        assert browser.find_elements(By.CSS_SELECTOR, "main script, main img") == []
        assert browser.execute_script("return window.__pwned === undefined")
    shoot(browser, "row-hostile")


def test_errors_page_groups_bad_rows_with_the_requeue_command(browser: Any, million_ui: Ui) -> None:
    browser.get(job_url(million_ui, MILLION, "/errors"))
    groups = browser.find_elements(By.CSS_SELECTOR, "#errors tr.error-group")
    (bad,) = sql(browser_db(million_ui), "SELECT count(*) FROM results WHERE status <> 'ok'")[0]
    shown = sum(int(g.find_elements(By.TAG_NAME, "td")[1].text.replace(",", "")) for g in groups)
    assert 0 < len(groups) <= 10 and shown == bad
    command = browser.find_element(By.ID, "requeue").text
    assert f"flashpipe retry {MILLION} --status failed --status invalid" in command
    shoot(browser, "errors")


def test_report_is_one_self_contained_file_that_renders(
    browser: Any, demo_db: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    done = run_cli("report", "comments-demo", "-o", str(out), "--db", str(demo_db))
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?\s*([^"'\s>]+)""", page, re.I)
    assert not [r for r in refs if re.match(r"(?:https?:)?//", r)], refs
    assert "<script" not in page.lower() and "<link" not in page.lower()
    browser.get(out.as_uri())
    assert browser.find_element(By.TAG_NAME, "h1").text == "comments-demo"
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart rect.mark")) > 5
    shoot(browser, "report")
    missing = run_cli("report", "nope", "-o", str(out), "--db", str(demo_db))
    assert missing.returncode == 2 and "no job named 'nope'" in missing.stderr


# -- a million rows ---------------------------------------------------------------------------
def test_million_rows_filter_and_keyset_paging(browser: Any, million_ui: Ui) -> None:
    base = job_url(million_ui, MILLION, "/rows")
    browser.get(base + "?col=label&val=feature_request&status=ok")
    seen: list[str] = []
    for _ in range(3):
        ids = cells(browser, "row_id")
        assert len(ids) == 50 and set(cells(browser, "label")) == {"feature_request"}
        seen += ids
        browser.find_element(By.ID, "next").click()
    assert seen == sorted(seen) and len(set(seen)) == 150
    browser.find_element(By.CSS_SELECTOR, "a[rel=prev]").click()
    assert cells(browser, "row_id") == seen[100:]
    shoot(browser, "rows-million")
    browser.get(base + "?q=dark+mode&col=lang&val=de")
    ids = cells(browser, "row_id")
    assert len(ids) == 50 and set(cells(browser, "lang")) == {"de"}
    browser.get(job_url(million_ui, MILLION, "/row?id=" + ids[0]))
    assert "dark mode" in browser.find_element(By.ID, "input-text").get_attribute("value")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#calls tr.call")) >= 1


def test_million_row_job_page_draws_its_charts(browser: Any, million_ui: Ui) -> None:
    browser.get(job_url(million_ui, MILLION))
    titles = [
        t.get_attribute("textContent")
        for t in browser.find_elements(By.CSS_SELECTOR, ".card:first-child rect.mark title")
    ]
    assert sum(int(t.split(": ")[1].replace(",", "")) for t in titles) == 1_000_000
    assert browser.find_elements(By.CSS_SELECTOR, "rect.warn")  # the 429s over time
    shoot(browser, "job-million")


# -- a running job ------------------------------------------------------------------------------
def test_running_job_progress_changes_between_two_reads(browser: Any, tmp_path: Path) -> None:
    sim = SimProcess([]).start()
    src = write_jsonl(tmp_path / "in.jsonl", ticket_rows(3000))
    db = tmp_path / "live.duckdb"
    run = start_run(
        job_file(tmp_path, sim, src, name="live"), db, "--set", "limits.rpm=900", "--quiet"
    )
    ui: Ui | None = None
    try:
        wait_for_rows(db, 1)
        ui = Ui(db)
        browser.get(ui.base + "/")

        def progress() -> str:
            try:
                return str(
                    browser.find_element(By.CSS_SELECTOR, "tr.job[data-job=live] .progress").text
                )
            except (NoSuchElementException, StaleElementReferenceException):
                return ""

        first = WebDriverWait(browser, 15).until(lambda _: progress())
        assert "running" in browser.find_element(By.CSS_SELECTOR, "tr.job").text
        shoot(browser, "jobs-running")
        # the page refreshes itself; no new browser.get()
        second = WebDriverWait(browser, 20).until(lambda _: (p := progress()) and p != first and p)
        done = lambda text: int(text.split("/")[0].replace(",", ""))  # noqa: E731
        assert done(second) > done(first)
    finally:
        run.send_signal(signal.SIGINT)
        run.wait(30)
        if ui is not None:
            ui.stop()
        sim.stop()
