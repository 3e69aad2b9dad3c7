"""The row lifecycle, pure: records, the verdict on a reply, retry and outage policies, and the
policies the lanes and the Ray driver use (rate limits, prices and cost, a budget split across
workers).

Nothing here does I/O or imports anyio, aiohttp, duckdb or pyarrow; the lanes drive it and the
store writes what it returns (an import-linter contract in pyproject.toml holds the layers).
"""
