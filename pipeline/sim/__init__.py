"""flashpipe-sim: a fake Gemini / OpenAI service (standalone: imports nothing else of pipeline).

`python -m pipeline.sim --port 0` prints `flashpipe-sim listening on http://HOST:PORT` once bound
and serves until SIGINT / SIGTERM.
"""

from pipeline.sim.cli import main

__all__ = ["main"]
