"""Jobs that run scenario suites as pytest subprocesses: the main job, bisect, mutate."""
