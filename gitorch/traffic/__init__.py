"""gitorch.traffic."""
