"""One module per sub-command: each adds its parser and runs it, returning an exit code."""
