"""``audiosep`` sub-commands. Each module has ``add_arguments(parser)`` and ``run(args) -> int``."""
