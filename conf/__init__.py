# Makes the config tree importable as the package `ganrun.conf` (see pyproject.toml).
