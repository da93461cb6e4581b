"""gitorch.state."""
