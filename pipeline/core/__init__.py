"""The row lifecycle, pure: records, the verdict on a reply, retry and outage policies.

Nothing here does I/O or imports anyio, aiohttp, duckdb or pyarrow; the lanes drive it and the
store writes what it returns (an import-linter contract in pyproject.toml holds the layers).
"""
