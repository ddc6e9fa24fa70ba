"""medeff.data."""
