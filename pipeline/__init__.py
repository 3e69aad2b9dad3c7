"""flashpipe: push millions of rows through cheap, fast LLM APIs into DuckDB.

The small public API: `load_spec()` reads a job file, `run_job()` runs it.
"""

from pipeline.engine import run_job
from pipeline.spec import load_spec

__version__ = "0.1.0"
__all__ = ["__version__", "load_spec", "run_job"]
