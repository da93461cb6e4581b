"""gitorch.runtime."""
