"""Tasks: what differs between kinds of job. Each module holds one task (its accepted data, what
`ganrun eval` measures, what `ganrun sample` does, its in-training evaluator); the config names
it (`task._target_`), so the loop, `eval` and `sample` dispatch through the checkpoint's config
and never import a task by name."""
