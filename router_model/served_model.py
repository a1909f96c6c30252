"""A trained functional-token artifact as one model file a generation server can load.

The embedded engines never need this: they score the artifact's token rows against the hidden
state themselves (``token_selector.py``). A server that only generates text (SGLang, llama.cpp's
server) must find the tokens in the model itself, so this writes a GGUF of the base model with

- the LoRA merged, in float16 (as ``merged_model.write_merged``);
- ``<nexa_K>`` for each of the artifact's tokens appended to the vocabulary, in token order, as
  user-defined tokens (matched in text as one token, and written out as text when generated);
- their embedding rows, appended to ``token_embd``, the artifact's rows times ``row_scale``:
  SmolLM2 ties its output layer to its embeddings, so each new token's logit is ``row_scale``
  times the score the embedded engine computes (the final hidden state times the row), and the
  token with the highest logit is the engine's choice.

Why the scale: the rows were trained against each other (cross-entropy among the artifact's
tokens), not against the rest of the vocabulary, and a server constraining output with a regex
lets the text ``<nexa_K>`` be spelled with ordinary tokens too: ``<`` then ``n``, ``exa``, ... with
the digit then chosen by ordinary text logits, not by the trained rows. Measured on the shipped
action generator (30 held-out decisions, this export at scale 1, llama.cpp): the ``<`` token
out-scored the best tool token in 6 of 30 (by at most 6%), and in a constrained greedy run 2 of 12
decisions took another tool that way. Scaling the rows by 1.5 keeps the order among the tools and
puts the best of them above ``<`` in all 30.

SGLang loads a ``.gguf`` model path with its GGUF loader (its tokenizer converted from the file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from octogate.core.llama_runtime import LEGACY_QUANTS, bundled_gguf_path, sha256_of
from octogate.router_model.artifact import RouterArtifactError, load_router
from octogate.router_model.merged_model import read_lora
from octogate.router_model.protocol import functional_token

_USER_DEFINED = 4  # llama.cpp's LLAMA_TOKEN_TYPE_USER_DEFINED


@dataclass(frozen=True)
class ServedModel:
    path: Path
    base_vocab: int
    token_ids: dict[int, int]  # functional token index -> its id in the new vocabulary
    row_scale: float


DEFAULT_ROW_SCALE = 1.5


def write_served_model(artifact_path: str | Path, out: str | Path, base: str | Path | None = None, *,
                       row_scale: float = DEFAULT_ROW_SCALE) -> ServedModel:
    """Write the model for ``artifact_path`` to ``out`` (a .gguf file); blocking, a few seconds."""
    if not row_scale > 0:
        raise ValueError(f"row_scale must be positive (it keeps the tokens' order), not {row_scale}")
    import gguf

    artifact = load_router(artifact_path)
    base = Path(base) if base else bundled_gguf_path()
    if sha256_of(base) != artifact.base_sha256:
        raise RouterArtifactError(f"{artifact.path} was trained on another base model than {base}")
    out = Path(out)
    alpha, adapters = read_lora(artifact.lora_path)
    reader = gguf.GGUFReader(str(base))
    tokens = list(reader.fields["tokenizer.ggml.tokens"].contents())
    base_vocab = len(tokens)
    order = sorted(artifact.tokens)
    rows = row_scale * artifact.rows[[artifact.row_index()[t] for t in order]].astype(np.float32)
    added = [functional_token(t) for t in order]
    clash = sorted(set(added) & set(tokens))
    if clash:
        raise RouterArtifactError(f"{base} already has tokens {', '.join(clash)}")
    replaced = {
        "tokenizer.ggml.tokens": tokens + added,
        "tokenizer.ggml.token_type": list(reader.fields["tokenizer.ggml.token_type"].contents()) + [_USER_DEFINED] * len(added),
        "general.name": f"{artifact.path.name} (octogate, {', '.join(added)} on {base.stem})",
        "general.file_type": 1,  # mostly F16
    }
    if "llama.vocab_size" in reader.fields:
        replaced["llama.vocab_size"] = base_vocab + len(added)
    if "output.weight" in {t.name for t in reader.tensors}:
        raise RouterArtifactError(f"{base} has an untied output layer: the token rows would not be its logits")

    quantised = {gguf.GGMLQuantizationType[name] for name in LEGACY_QUANTS}
    writer = gguf.GGUFWriter(str(out), arch=reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        kind = field.types[0]
        writer.add_key_value(name, replaced.get(name, field.contents()), kind,
                             sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    for t in reader.tensors:
        if t.name == "token_embd.weight":
            w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
            if w.shape != (base_vocab, rows.shape[1]):
                raise RouterArtifactError(f"token rows of {rows.shape[1]} dimensions do not fit {base}'s embeddings {w.shape}")
            writer.add_tensor(t.name, np.vstack([w, rows]).astype(np.float16))
        elif t.name in adapters or t.tensor_type in quantised:
            w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
            if t.name in adapters:
                a, b = adapters[t.name]
                w = w + (alpha / a.shape[0]) * (b @ a)
            writer.add_tensor(t.name, w.astype(np.float16))
        else:
            writer.add_tensor(t.name, np.array(t.data), raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return ServedModel(out, base_vocab, {t: base_vocab + i for i, t in enumerate(order)}, row_scale)
