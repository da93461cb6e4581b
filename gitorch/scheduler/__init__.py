"""gitorch.scheduler."""
