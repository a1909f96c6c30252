"""The argument's text as a training target, beside the functional token (``argument_weight``).

The router trainer's loss is the right token among the graph's tokens, read at the answer position.
A model whose answer goes on after the token (Husky's action generator writes the step's sub-task)
can also learn that text: each example's query is followed, in the cached features, by a *cue* (the
text the serving engine puts before the argument, e.g. ``Step: [search] ``) and the *target* (the
argument as the engine decodes it, escaped, with its ending), and the loss adds the cross-entropy
of each target token, predicted from the position before it through the tied output embedding.

Cue and target are ordinary text tokens, so the frozen lower blocks' output over them is cached
with the query's, as before; only the upper blocks run per step. Tool accuracy is still read at
the answer position (the last query token), which the continuation does not change: attention is
causal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from octogate.router_model.prompt_tokens import RouterPromptTokens
from octogate.router_model.training.data import Example

# (cue, target) for an example, or None when it has no argument to learn (e.g. Husky's finish)
Continuation = Callable[[Example], "tuple[str, str] | None"]


class ArgumentPlan:
    """Per example: where the answer position is, and which tokens follow the query and are learned."""

    def __init__(self, prompt: RouterPromptTokens, tokenize, examples: Sequence[Example], continuation: Continuation):
        self.query_lengths: list[int] = []
        self.cue_lengths: list[int] = []
        self.targets: list[list[int]] = []
        self.extra: list[list[int]] = []  # the ids that follow each query in its features: cue, then target
        digest = hashlib.sha256()
        for ex in examples:
            self.query_lengths.append(len(prompt.query(ex.query)))
            pair = continuation(ex)
            cue, target = ([], []) if pair is None else (tokenize(pair[0].encode(), False, False),
                                                         tokenize(pair[1].encode(), False, False))
            self.cue_lengths.append(len(cue))
            self.targets.append(target)
            self.extra.append(cue + target)
            digest.update(repr((cue, target)).encode())
        self.digest = digest.hexdigest()[:16]
        self.target_tokens = sum(len(t) for t in self.targets)

    def answer_positions(self, batch: Sequence[int]) -> torch.Tensor:
        return torch.tensor([self.query_lengths[i] - 1 for i in batch])

    def loss(self, states: torch.Tensor, batch: Sequence[int], embed: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the batch's target tokens; ``states``: the final hidden states of the
        batch (row r is example ``batch[r]``), ``embed``: the tied token embedding (the output head)."""
        rows, cols, want = [], [], []
        for r, i in enumerate(batch):
            start = self.query_lengths[i] + self.cue_lengths[i]  # the first target token's position
            for k, token in enumerate(self.targets[i]):
                rows.append(r)
                cols.append(start + k - 1)  # predicted from the position before it
                want.append(token)
        if not want:
            return states.sum() * 0.0
        logits = states[torch.tensor(rows), torch.tensor(cols)] @ embed.t()
        return F.cross_entropy(logits, torch.tensor(want))
