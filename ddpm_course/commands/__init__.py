"""One module per ``ddpm-course`` subcommand, each with ``add_arguments(parser)`` and ``run(args)``."""
