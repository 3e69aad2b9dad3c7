"""Where the store lives and who holds it: its path, a write probe before any request, the
side lock, and a disk fault as one line."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path

from pipeline.errors import AFTER_FAULT, FlashpipeError, JobBusy, StoreError, fault_cause

DEFAULT_PATH = "flashpipe.duckdb"


def resolve_path(cli_path: str | None, spec_path: str | None = None) -> str:
    return cli_path or os.environ.get("FLASHPIPE_DB") or spec_path or DEFAULT_PATH


# What a user can act on, from an OSError's errno or the text DuckDB copies from strerror()
def store_fault(path: str, action: str, exc: BaseException) -> StoreError:
    """`store 'x.duckdb': cannot write results: no space left on device; ...` as one line."""
    return StoreError(f"store {path!r}: cannot {action}: {fault_cause(exc)}; {AFTER_FAULT}")


def check_writable(path: str) -> None:
    """Before anything is sent: the store's directory exists and takes a write."""
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise StoreError(f"store {path!r}: its directory {str(folder)!r} does not exist")
    probe = folder / f".{Path(path).name}.{os.getpid()}.probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StoreError(
            f"store {path!r}: its directory {str(folder)!r} is not writable: {fault_cause(exc)}"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def busy_error(path: str, who: str, for_run: bool) -> FlashpipeError:
    if for_run:
        return JobBusy(f"store {path!r} is held by {who}; one runner per store")
    return StoreError(
        f"store {path!r} is busy: {who} is writing to it; `flashpipe status` reads its live snapshot"
    )


def holder_of(message: str) -> str:
    match = re.search(r"PID (\d+)", message)
    return f"process {match.group(1)}" if match else "another process"


class SideLock:
    """An flock on `<store>.lock`, taken before DuckDB's own lock and held until close.

    DuckDB's lock goes away while the writer reopens its connection; this one does not, so no
    second runner (nor a reader of ours, which would block the reopen) slips in between.
    Writers hold it exclusive, readers shared; the holder's PID is in the file.
    """

    def __init__(self, db_path: str, *, shared: bool):
        self.path = db_path + ".lock"
        self.fd = -1
        try:
            flags = os.O_RDONLY if shared else os.O_RDWR | os.O_CREAT
            self.fd = os.open(self.path, flags, 0o644)
        except OSError:
            return  # no lock file (a reader of an old store) or an unwritable directory
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read_holder()
            os.close(self.fd)
            self.fd = -1
            raise Held(holder) from None
        if not shared:
            os.ftruncate(self.fd, 0)
            os.write(self.fd, f"PID {os.getpid()}\n".encode())

    def _read_holder(self) -> str:
        try:
            return holder_of(os.pread(self.fd, 64, 0).decode(errors="replace"))
        except OSError:
            return "another process"

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1


class Held(Exception):
    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder
