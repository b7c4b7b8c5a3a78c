"""rumor: gossip package."""
