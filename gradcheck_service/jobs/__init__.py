"""Running a queued check from a worker: the child-process launcher and the run's lifecycle around it."""
