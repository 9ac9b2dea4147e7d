"""The ``refine-by-align`` subcommands: one module each, owning ``HELP``, ``EXAMPLE``, ``add_arguments(parser)``
and ``run(args)``. ``cli.py`` only dispatches."""
