"""The daemon's router: the cluster layer's routing policy over this node's
gossip view, with this node's own replica judged on its exact queue.
(node.cluster.routing holds the policies; this only gathers their inputs.)

The configured policy applies to every model, except the default, `rumor`,
which routes LLM requests with `rumor_prefix` (prefix-cache affinity against
load) and tensor requests with `rumor`.
"""

from __future__ import annotations

import random

from gossip.core import GossipNode

from .cluster.candidates import PrefixView
from .cluster.prefix import PrefixRequest, SummaryCache
from .cluster.routing import CandidateBuilder, Policy, RouterState, policy
from .cluster.view import GossipView
from .models import LocalModels
from .prefixes import FallbackView, PromptHasher, char_scheme

#: Policies that read the request's prefix (the others never tokenize it).
PREFIX_POLICIES = frozenset({"rumor_prefix", "cache_aware"})


class Router:
    def __init__(
        self, name: str, policy_name: str, local_margin: float, models: LocalModels
    ) -> None:
        self.name = name
        self.policy = policy(policy_name)
        self.llm_policy = policy("rumor_prefix") if policy_name == "rumor" else self.policy
        self.local_margin = local_margin
        self.models = models
        self.state = RouterState()
        self.rng = random.Random()
        self.summaries = SummaryCache()
        self.hasher = PromptHasher(models.inference)
        self._members = 0

    def policy_for(self, llm: bool) -> Policy:
        return self.llm_policy if llm else self.policy

    def prefix_request(
        self, node: GossipNode, model: str, chat: bool, messages: list[dict[str, object]],
        prompt: str,
    ) -> PrefixRequest | None:  # fmt: skip
        """The request's block-hash chain, if the LLM policy reads it."""
        if self.llm_policy.name not in PREFIX_POLICIES:
            return None
        return self.hasher.request(node, model, chat, messages, prompt)

    def choose(
        self,
        node: GossipNode,
        model: str,
        exclude: set[str],
        now: float,
        prefix: PrefixRequest | None = None,
        llm: bool = False,
    ) -> str | None:
        """A ready replica of `model` not in `exclude`, or None. `prefix`: an
        LLM request's prompt chain (from `prefix_request`)."""
        if len(node.members) != self._members:  # forget the summaries of departed members
            self._members = len(node.members)
            self.summaries.forget(node.members)
        view = GossipView(node, self.summaries)
        # Others as gossip says; ourselves as the inference service says (exact,
        # and ready before our own record is republished).
        names = [n for n in view.ready_replicas(model) if n not in exclude and n != self.name]
        if self.name not in exclude and self.models.ready(model):
            names.append(self.name)
        if not names:
            return None
        summaries: PrefixView = view
        if prefix is not None and char_scheme(model) in prefix.chains:
            summaries = FallbackView(self.hasher)  # no tokenizer here: what we routed
        cand = CandidateBuilder(
            view, self.state, self.name, now, self.models.queue(model), prefix, summaries
        )
        margin = self.local_margin
        if margin < 0:
            # One batch: requests that fit in it add no queueing. Not so for an
            # LLM, whose prefills queue behind each other: one request.
            margin = 1.0 if llm else float(self.models.max_batch(model))
        local = self.name if self.name in names else None
        choice = self.policy_for(llm).choose(
            names, cand, self.rng, self.state, local=local, local_margin=margin
        )
        if prefix is not None:
            self.hasher.note_routed(choice, prefix)
        return choice
