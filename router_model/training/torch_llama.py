"""SmolLM2 (Llama architecture) in PyTorch, read straight from the GGUF that llama.cpp serves.

Training the router needs gradients, which llama.cpp does not give, but it must train exactly the
network llama.cpp later runs. So the weights come from the same GGUF file (dequantised with the
``gguf`` package, llama.cpp's own reader) and are kept in llama.cpp's layout: GGUF stores the query
and key projections row-permuted for its "normal" RoPE, which rotates *adjacent* pairs of each
head's features. Rotating adjacent pairs here, on the permuted weights, is the same function as
Hugging Face's rotate-half on the original weights, and it means a LoRA trained on these matrices
is written back to GGUF as is, with no permutation to get wrong.

Only what routing needs is here: a causal forward over right-padded batches, the final hidden
state of chosen positions, LoRA on the upper blocks, and running the lower blocks once without
gradients so their output can be cached (``forward_from``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LORA_TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@dataclass(frozen=True)
class LlamaShape:
    n_layers: int
    dim: int
    ffn_dim: int
    n_heads: int
    n_kv_heads: int
    rope_base: float
    norm_eps: float
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


def read_gguf(path: str | Path) -> tuple[LlamaShape, dict[str, np.ndarray]]:
    """The model's shape and its tensors as float32 arrays, named as in the GGUF (``blk.3.attn_q.weight``)."""
    import gguf  # the training extra; serving never imports it

    reader = gguf.GGUFReader(str(path))

    def field(name: str):
        return reader.fields[name].contents()

    arch = field("general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: a {arch!r} model; the router trainer handles the llama architecture")
    # np.array copies: the file is memory-mapped read-only, and the weights become torch tensors
    tensors = {t.name: np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32) for t in reader.tensors}
    shape = LlamaShape(
        n_layers=int(field("llama.block_count")),
        dim=int(field("llama.embedding_length")),
        ffn_dim=int(field("llama.feed_forward_length")),
        n_heads=int(field("llama.attention.head_count")),
        n_kv_heads=int(field("llama.attention.head_count_kv")),
        rope_base=float(field("llama.rope.freq_base")),
        norm_eps=float(field("llama.attention.layer_norm_rms_epsilon")),
        vocab=tensors["token_embd.weight"].shape[0],
    )
    return shape, tensors


class LoRALinear(nn.Module):
    """A frozen weight plus a trainable low-rank update ``(alpha / r) * B @ A`` (B starts at zero)."""

    def __init__(self, weight: torch.Tensor, rank: int = 0, alpha: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.rank = rank
        if rank:
            out_features, in_features = weight.shape
            self.lora_a = nn.Parameter(torch.empty(rank, in_features))
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
            self.lora_b = nn.Parameter(torch.zeros(out_features, rank))
            self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        if self.rank:
            y = y + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scale
        return y


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight.to(x.dtype)


def rope_tables(shape: LlamaShape, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    half = shape.head_dim // 2
    inv = shape.rope_base ** (-torch.arange(half, dtype=torch.float64) * 2 / shape.head_dim)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cos(angles).float(), torch.sin(angles).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """llama.cpp's normal RoPE: each adjacent pair (x[2i], x[2i+1]) turns by angle i. x: (B, H, T, D)."""
    x1, x2 = x[..., 0::2].float(), x[..., 1::2].float()
    c, s = cos[: x.shape[2]], sin[: x.shape[2]]
    out = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)
    return out.flatten(-2).to(x.dtype)


class Block(nn.Module):
    def __init__(self, shape: LlamaShape, tensors: dict[str, np.ndarray], i: int, rank: int, alpha: float):
        super().__init__()
        self.shape = shape

        def lin(name: str) -> LoRALinear:
            return LoRALinear(torch.from_numpy(tensors[f"blk.{i}.{name}.weight"]), rank, alpha)

        self.attn_norm = RMSNorm(torch.from_numpy(tensors[f"blk.{i}.attn_norm.weight"]), shape.norm_eps)
        self.ffn_norm = RMSNorm(torch.from_numpy(tensors[f"blk.{i}.ffn_norm.weight"]), shape.norm_eps)
        self.proj = nn.ModuleDict({name: lin(name) for name in LORA_TARGETS})

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                past: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One block over ``x`` (B, T, dim), which follows ``past``'s keys and values (batch 1, shared).

        ``cos``/``sin`` are the tables for x's own positions. Returns the output and x's keys and values.
        """
        s, p = self.shape, self.proj
        b, t, _ = x.shape
        h = self.attn_norm(x)
        q = p["attn_q"](h).view(b, t, s.n_heads, s.head_dim).transpose(1, 2)
        k = p["attn_k"](h).view(b, t, s.n_kv_heads, s.head_dim).transpose(1, 2)
        v = p["attn_v"](h).view(b, t, s.n_kv_heads, s.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        kv = (k, v)
        if past is None:
            mask, causal = None, True
        else:  # every query position sees the whole shared prefix, then its own causal part
            k = torch.cat((past[0].expand(b, -1, -1, -1).to(k.dtype), k), dim=2)
            v = torch.cat((past[1].expand(b, -1, -1, -1).to(v.dtype), v), dim=2)
            n = past[0].shape[2]
            mask = torch.ones(t, n + t, dtype=torch.bool).tril(diagonal=n)
            causal = False
        group = s.n_heads // s.n_kv_heads  # query head h reads key/value head h // group, as in ggml
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        x = x + p["attn_output"](a.transpose(1, 2).reshape(b, t, s.dim))
        h = self.ffn_norm(x)
        return x + p["ffn_down"](F.silu(p["ffn_gate"](h)) * p["ffn_up"](h)), kv


class Llama(nn.Module):
    """The GGUF's network with LoRA (rank ``rank``) on blocks ``lora_from`` and above."""

    def __init__(self, shape: LlamaShape, tensors: dict[str, np.ndarray], *, lora_from: int, rank: int, alpha: float):
        super().__init__()
        self.shape = shape
        self.lora_from = lora_from
        self.embed = nn.Parameter(torch.from_numpy(tensors["token_embd.weight"]), requires_grad=False)
        self.blocks = nn.ModuleList(
            Block(shape, tensors, i, rank if i >= lora_from else 0, alpha) for i in range(shape.n_layers)
        )
        self.norm = RMSNorm(torch.from_numpy(tensors["output_norm.weight"]), shape.norm_eps)
        self._rope = rope_tables(shape, 1024)

    def rope(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if length > self._rope[0].shape[0]:
            self._rope = rope_tables(self.shape, 2 * length)
        return self._rope

    def _run(self, blocks, x: torch.Tensor, start: int, past: list | None) -> tuple[torch.Tensor, list]:
        cos, sin = self.rope(start + x.shape[1])
        cos, sin = cos[start:], sin[start:]
        kvs = []
        for j, block in enumerate(blocks):
            x, kv = block(x, cos, sin, None if past is None else past[j])
            kvs.append(kv)
        return x, kvs

    @torch.no_grad()
    def lower(self, ids: torch.Tensor, start: int = 0, past: list | None = None) -> tuple[torch.Tensor, list]:
        """The hidden state entering block ``lora_from`` (frozen blocks only, so it can be cached),
        and each lower block's keys and values; ``ids`` sit at positions ``start``... after ``past``."""
        return self._run(self.blocks[: self.lora_from], F.embedding(ids, self.embed), start, past)

    def forward_from(self, x: torch.Tensor, start: int = 0, past: list | None = None) -> tuple[torch.Tensor, list]:
        """The normalised final hidden state from ``lower``'s output, and the upper blocks' keys and values."""
        x, kvs = self._run(self.blocks[self.lora_from:], x, start, past)
        return self.norm(x), kvs

    def lora_tensors(self) -> dict[str, torch.Tensor]:
        """The trained update, named as llama.cpp's LoRA adapters name it (``blk.N.attn_q.weight.lora_a``)."""
        out = {}
        for i, block in enumerate(self.blocks):
            for name, lin in block.proj.items():
                if lin.rank:
                    out[f"blk.{i}.{name}.weight.lora_a"] = lin.lora_a.detach()
                    out[f"blk.{i}.{name}.weight.lora_b"] = lin.lora_b.detach()
        return out

    def load_lora(self, tensors: dict[str, torch.Tensor]) -> None:
        for i, block in enumerate(self.blocks):
            for name, lin in block.proj.items():
                if lin.rank:
                    lin.lora_a.data.copy_(tensors[f"blk.{i}.{name}.weight.lora_a"])
                    lin.lora_b.data.copy_(tensors[f"blk.{i}.{name}.weight.lora_b"])
