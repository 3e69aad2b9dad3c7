"""One exception hierarchy; each error carries the exit code the CLI turns it into."""

from __future__ import annotations


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
