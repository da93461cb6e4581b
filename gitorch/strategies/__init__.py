"""gitorch.strategies."""
