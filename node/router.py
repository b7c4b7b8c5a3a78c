"""The daemon's router: the cluster layer's routing policy over this node's
gossip view, with this node's own replica judged on its exact queue.
(node.cluster.routing holds the policies; this only gathers their inputs.)"""

from __future__ import annotations

import random

from gossip.core import GossipNode

from .cluster.routing import CandidateBuilder, RouterState, policy
from .cluster.view import GossipView
from .models import LocalModels


class Router:
    def __init__(
        self, name: str, policy_name: str, local_margin: float, models: LocalModels
    ) -> None:
        self.name = name
        self.policy = policy(policy_name)
        self.local_margin = local_margin
        self.models = models
        self.state = RouterState()
        self.rng = random.Random()

    def choose(self, node: GossipNode, model: str, exclude: set[str], now: float) -> str | None:
        """A ready replica of `model` not in `exclude`, or None."""
        view = GossipView(node)
        # Others as gossip says; ourselves as the inference service says (exact,
        # and ready before our own record is republished).
        names = [n for n in view.ready_replicas(model) if n not in exclude and n != self.name]
        if self.name not in exclude and self.models.ready(model):
            names.append(self.name)
        if not names:
            return None
        cand = CandidateBuilder(view, self.state, self.name, now, self.models.queue(model))
        margin = self.local_margin
        if margin < 0:  # one batch: requests that fit in it add no queueing
            margin = float(self.models.max_batch(model))
        local = self.name if self.name in names else None
        return self.policy.choose(
            names, cand, self.rng, self.state, local=local, local_margin=margin
        )
