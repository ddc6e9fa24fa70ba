"""medeff.models."""
