"""medeff.engine."""
