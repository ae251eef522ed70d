"""Running a queued check from a worker: the child-process launcher, the sandbox, the child itself (runner.py)
and the run's lifecycle around it."""
