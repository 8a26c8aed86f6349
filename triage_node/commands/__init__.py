"""The command line: one module per subcommand, each with one parser function and one ``main``.

``main.py`` dispatches from its table of commands; ``common.py`` holds what
they share (the error helper, exit codes, argument types, the ``--bundle``
resolver); ``views.py`` the read-only store views of ``worklist`` and ``status``.
Every other module is a subcommand: a docstring whose first line says what it
does, ``add_arguments(parser)`` and ``main(args) -> int``.
"""
