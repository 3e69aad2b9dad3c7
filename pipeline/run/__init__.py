"""One job run, in stages joined by bounded channels.

- `engine.py`   run_job: opens the run, wires the stages in one task group, records the end
- `job.py`      JobRun: the run's shared state, its workers and its ticker; open_job
- `reader.py`   Reader: input -> resume lookup -> copies and cache -> packed work items
- `writer.py`   Writer: outcomes -> journal -> batched commits to the store
- `channel.py`  the bounded channels between the stages
- `journal.py`  the call journal: billed calls not yet stored survive a kill -9
"""
