"""The ``medeff`` command. Each subcommand module is a thin wrapper over a plain library function."""
