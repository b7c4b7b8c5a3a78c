"""The cluster-policy layer: which replica serves a request, when a node answers
busy, which node holds which model. Pure (no trio, no sockets, no clock reads:
time comes in as `now`, randomness as an injected `random.Random`), so the
daemon and the simulator (`rumor sim routing`, `rumor sim placement`) run this
same code, the way both run the gossip core.
"""
