"""gitorch.diff."""
