"""One exception hierarchy; each error carries the exit code the CLI turns it into."""

from __future__ import annotations

import errno


class FlashpipeError(Exception):
    """Base of every error flashpipe reports to a user as one line."""

    exit_code = 1


class SpecError(FlashpipeError):
    """The job file or a --set override is invalid; nothing was sent."""

    exit_code = 2


class UsageError(FlashpipeError):
    """The command line asks for something that cannot be done."""

    exit_code = 2


class JobBusy(FlashpipeError):
    """Another process holds the job (or the store file)."""

    exit_code = 2


class BudgetExhausted(FlashpipeError):
    """budget.max_usd is reached; the job is resumable with a higher cap."""

    exit_code = 3


class ProviderStop(FlashpipeError):
    """The provider refused the job as a whole (key, API, model, per-day quota, billing)."""

    exit_code = 4


class ProviderUnreachable(FlashpipeError):
    """The provider did not answer (no connection, or nearly all 5xx) for longer than
    limits.outage_minutes; no row was charged for it, every unfinished row stays pending."""

    exit_code = 6


class RowsFailed(FlashpipeError):
    """The job ran to its end, but more than limits.max_failed_share of its rows failed."""

    exit_code = 7


class StoreError(FlashpipeError):
    """The DuckDB store cannot be used (locked, read-only, corrupt, full)."""

    exit_code = 5


class Interrupted(FlashpipeError):
    """SIGINT/SIGTERM stopped the job; it is resumable."""

    exit_code = 130


_CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "the file or its directory is gone",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EIO: "input/output error",
}
_CAUSE_TEXT = {
    "no space left on device": _CAUSES[errno.ENOSPC],
    "disk quota exceeded": _CAUSES[errno.EDQUOT],
    "read-only file system": _CAUSES[errno.EROFS],
    "no such file or directory": _CAUSES[errno.ENOENT],
    "permission denied": _CAUSES[errno.EACCES],
    "input/output error": _CAUSES[errno.EIO],
}
AFTER_FAULT = "nothing stored is lost; fix it and run the job again to resume"


def fault_cause(exc: BaseException) -> str:
    """One short cause for a failed store or journal operation."""
    if isinstance(exc, OSError) and exc.errno in _CAUSES:
        return _CAUSES[exc.errno]
    text = str(exc)
    low = text.lower()
    for needle, cause in _CAUSE_TEXT.items():
        if needle in low:
            return cause
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
