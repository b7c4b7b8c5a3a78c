"""rumor: inference package."""
