"""Small shared helpers: atomic file writes, option lookup, logging."""
