"""Training, search, export and the command-line entry points."""
