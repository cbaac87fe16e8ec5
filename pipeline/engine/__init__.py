"""Running a resolved pipeline: the runner's phases, the model stage, the prediction cache, scoring and the run
folder. Knows no task: it calls the plugins' objects through the contract."""
