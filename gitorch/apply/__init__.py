"""gitorch.apply."""
