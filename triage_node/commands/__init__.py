"""The command line: one module per subcommand, each with one parser function and one ``main``."""
