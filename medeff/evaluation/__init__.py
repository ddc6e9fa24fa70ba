"""medeff.evaluation."""
