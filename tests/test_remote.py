"""s3:// inputs and exports against a real S3-compatible server (moto's server mode) on
loopback, reached through the standard AWS environment, as a user's credentials would be."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline.errors import SpecError
from pipeline.simproc import SimProcess
from tests.support import make_spec, run_cli, run_sync, sql, ticket_rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    """A moto S3 server on loopback and the environment that points the AWS SDKs at it."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("the moto server did not start") from None
            time.sleep(0.1)
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        proc.wait(10)


def s3() -> pafs.S3FileSystem:
    fs, _ = pafs.FileSystem.from_uri("s3://any")
    return fs


def make_bucket(name: str) -> None:
    import boto3

    boto3.client("s3").create_bucket(Bucket=name)


def test_an_s3_glob_of_parquet_files_runs_and_exports_to_s3(
    s3_env: dict[str, str], sim: SimProcess, tmp_path: Path
) -> None:
    make_bucket("in-bucket")
    fs = s3()
    rows = ticket_rows(90)
    for part in range(3):
        chunk = rows[part * 30 : (part + 1) * 30]
        table = pa.table(
            {
                "id": [r["id"] for r in chunk],
                "text": [r["text"] for r in chunk],
                "score": pa.array([float(i) for i in range(30)], pa.float64()),
            }
        )
        pq.write_table(table, f"in-bucket/tickets/part-{part}.parquet", filesystem=fs)
    pq.write_table(pa.table({"x": [1]}), "in-bucket/other/part-9.parquet", filesystem=fs)
    with fs.open_output_stream("in-bucket/tickets/README.txt") as out:
        out.write(b"not an input")

    spec = make_spec(
        sim,
        Path("unused"),
        extra={"input": {"path": "s3://in-bucket/tickets/*.parquet", "keep": ["score"]}},
    )
    db = tmp_path / "s.duckdb"
    summary = run_sync(spec, db)
    assert summary.state == "done" and summary.rows == {"ok": 90}
    assert sql(db, "SELECT count(*), count(DISTINCT row_id) FROM results") == [(90, 90)]
    assert sql(db, "SELECT min(pos) FROM results") == [("part-0.parquet#row:1",)]

    make_bucket("out-bucket")
    done = run_cli(
        "results",
        "t",
        "--format",
        "parquet",
        "-o",
        "s3://out-bucket/t/out.parquet",
        "--db",
        str(db),
    )
    assert done.returncode == 0, done.stderr
    out = pq.read_table("out-bucket/t/out.parquet", filesystem=fs)
    assert out.num_rows == 90
    assert out.schema.field("score").type == pa.float64()


def test_an_s3_glob_that_matches_nothing_is_one_line(s3_env: dict[str, str]) -> None:
    from pipeline.files import input_files

    make_bucket("empty-bucket")
    with pytest.raises(SpecError, match="matches no file"):
        input_files("s3://empty-bucket/nothing/*.jsonl.gz")


def test_a_gzipped_jsonl_on_s3_is_read_like_a_local_one(
    s3_env: dict[str, str], sim: SimProcess, tmp_path: Path
) -> None:
    import gzip

    import orjson

    make_bucket("gz-bucket")
    data = b"".join(orjson.dumps(r) + b"\n" for r in ticket_rows(25))
    with s3().open_output_stream("gz-bucket/rows.jsonl.gz", compression=None) as out:
        out.write(gzip.compress(data))
    spec = make_spec(sim, Path("unused"), extra={"input": {"path": "s3://gz-bucket/rows.jsonl.gz"}})
    assert run_sync(spec, tmp_path / "s.duckdb").rows == {"ok": 25}


def test_a_gzipped_jsonl_over_https_is_read_through_fsspec(sim: SimProcess, tmp_path: Path) -> None:
    import functools
    import gzip
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    import orjson

    served = tmp_path / "www"
    served.mkdir()
    data = b"".join(orjson.dumps(r) + b"\n" for r in ticket_rows(15))
    (served / "rows.jsonl.gz").write_bytes(gzip.compress(data))

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/rows.jsonl.gz"
        spec = make_spec(sim, Path("unused"), extra={"input": {"path": url}})
        assert run_sync(spec, tmp_path / "s.duckdb").rows == {"ok": 15}
    finally:
        server.shutdown()
        server.server_close()
