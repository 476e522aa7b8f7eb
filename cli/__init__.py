"""The `ember` command line: the one module allowed to import every part of ember."""
