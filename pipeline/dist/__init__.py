"""Past one machine: the online lane on Ray worker actors, one quota broker actor per key pool.

The driver (the `flashpipe` process) keeps what must be single: the DuckDB store and its one
writer, the journal, the resume anti-join, the budget, progress and status. Ray is an optional
extra: `pip install "flashpipe[ray]"`.
"""

from __future__ import annotations

from types import ModuleType

from pipeline.errors import UsageError

INSTALL_HINT = 'engine.kind = "ray" needs Ray: pip install "flashpipe[ray]"'


def require_ray() -> ModuleType:
    """The ray module, or a one-line error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return ray
