"""The DuckDB store: one file holds every job's results, calls, batches and cached answers.

- `store.py`   the Store: one connection that opens, migrates, writes and reports
- `thread.py`  StoreThread: the store's own thread, which the event loop hands every call
- `schema.py`  the tables' DDL, the migrations an old store needs, the answers cache's insert
- `tables.py`  records as Arrow tables, one INSERT per table per commit
- `sql.py`     quoting and the typed view's column expressions
- `disk.py`    the store's path, the write probe, the side lock, a disk fault as one line
"""

from pipeline.store.disk import check_writable, resolve_path, store_fault
from pipeline.store.schema import BATCH_COLUMNS, SCHEMA
from pipeline.store.sql import sql_ident, sql_str
from pipeline.store.store import Store, changed_keys, view_name
from pipeline.store.thread import StoredBatches, StoreThread

__all__ = [
    "BATCH_COLUMNS",
    "SCHEMA",
    "Store",
    "StoreThread",
    "StoredBatches",
    "changed_keys",
    "check_writable",
    "resolve_path",
    "sql_ident",
    "sql_str",
    "store_fault",
    "view_name",
]
