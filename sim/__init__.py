"""rumor: sim package."""
