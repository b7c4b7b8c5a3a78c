"""rumor: node package."""
