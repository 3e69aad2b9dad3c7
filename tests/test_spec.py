from pathlib import Path

import pytest

from pipeline.errors import SpecError
from pipeline.spec import load_spec
from tests.support import run_cli

GOOD = """
name = "j"
task = "classify"
[input]
path = "in.jsonl"
[classify]
labels = ["a", "b"]
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "in.jsonl").write_text('{"text": "x"}\n')
    p = tmp_path / "job.toml"
    p.write_text(text)
    return p


def test_good_job_file_loads_with_defaults(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, GOOD))
    assert spec.task == "classify"
    assert [label.name for label in spec.classify.labels] == ["a", "b"]  # type: ignore[union-attr]
    assert spec.limits.concurrency is None
    assert spec.provider.base_url == "https://generativelanguage.googleapis.com"


def test_set_overrides_any_key(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, GOOD), ["limits.rpm=600", "classify.multi_label=true"])
    assert spec.limits.rpm == 600
    assert spec.classify is not None and spec.classify.multi_label


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (('task = "classify"', 'task = "summarise"'), "task"),
        (('path = "in.jsonl"', 'file = "in.jsonl"'), "input."),
        (('labels = ["a", "b"]', "labels = []"), "classify.labels"),
        (("[classify]", "[limits]\nrpm = -1\n[classify]"), "limits.rpm"),
        (("[classify]", '[limits]\nconcurrency = "lots"\n[classify]'), "limits.concurrency"),
    ],
)
def test_bad_job_file_names_the_key(tmp_path: Path, edit: tuple[str, str], key: str) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, GOOD.replace(*edit)))
    assert key in str(err.value)


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (('task = "classify"', 'task = "summarise"'), "task"),
        (('path = "in.jsonl"\n', ""), "input.path"),
        (('labels = ["a", "b"]', "labels = []"), "classify.labels"),
    ],
)
def test_run_with_bad_job_file_exits_2_with_one_line(
    tmp_path: Path, edit: tuple[str, str], key: str
) -> None:
    job = write(tmp_path, GOOD.replace(*edit))
    proc = run_cli("run", str(job), "--db", str(tmp_path / "s.duckdb"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], proc.stderr
    assert not (tmp_path / "s.duckdb").exists()


def test_unknown_model_without_pricing_is_refused_before_sending(tmp_path: Path) -> None:
    job = write(
        tmp_path, GOOD.replace('task = "classify"', 'task = "classify"\nmodel = "mystery-9"')
    )
    proc = run_cli("run", str(job), "--db", str(tmp_path / "s.duckdb"), env={"GEMINI_API_KEY": "k"})
    assert proc.returncode == 2
    assert "pricing" in proc.stderr and "mystery-9" in proc.stderr
