"""flashpipe: push millions of rows through cheap, fast LLM APIs into DuckDB.

From Python: `Job` (a job file or spec: estimate, run, status, cost, results, retry) and the
one-call helpers `classify`, `translate`, `moderate` and `extract` for in-memory data.
`load_spec()` and `run_job()` are the lower layer the CLI uses.
"""

from pipeline.api import (
    Cost,
    Estimate,
    Job,
    JobState,
    RowStatus,
    Status,
    Tokens,
    classify,
    custom,
    extract,
    moderate,
    translate,
)
from pipeline.errors import FlashpipeError
from pipeline.run.engine import run_job
from pipeline.run.job import RunSummary
from pipeline.spec import JobSpec, load_spec

__version__ = "0.1.0"
__all__ = [
    "Cost",
    "Estimate",
    "FlashpipeError",
    "Job",
    "JobSpec",
    "JobState",
    "RowStatus",
    "RunSummary",
    "Status",
    "Tokens",
    "__version__",
    "classify",
    "custom",
    "extract",
    "load_spec",
    "moderate",
    "run_job",
    "translate",
]
