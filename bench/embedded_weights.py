"""The embedded chat model's speed on its bundled Q4_1 weights against its Q8_0 copy (`weights: q8_0`).

    .venv/bin/python bench/embedded_weights.py [--rounds 2] [--threads 2]

For each weight format, in alternating rounds in one process (so both see the same machine):
the time to process a 900-token prompt, and the time to generate 64 tokens greedily after a
50-token prompt. Prints each figure and the Q8_0/Q4_1 ratio of the medians, and whether both
formats generated the same first tokens.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from llama_cpp import Llama

from octogate.core.llama_runtime import bundled_gguf_path, q8_0_model_path

TEXT = Path(__file__).resolve().parent.parent / "README.md"


def measure(path: Path, threads: int) -> tuple[float, float, list[int]]:
    llm = Llama(model_path=str(path), n_ctx=2048, n_threads=threads, verbose=False)
    tokens = llm.tokenize(TEXT.read_text().encode())[:900]
    started = time.perf_counter()
    llm.reset()
    llm.eval(tokens)
    prefill = time.perf_counter() - started
    started, out = time.perf_counter(), []
    for token in llm.generate(tokens[:50], temp=0.0, reset=True):
        out.append(token)
        if len(out) == 64:
            break
    return prefill, time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    formats = {"Q4_1": bundled_gguf_path(), "Q8_0": q8_0_model_path(bundled_gguf_path())}
    results: dict[str, list[tuple[float, float, list[int]]]] = {name: [] for name in formats}
    for _ in range(args.rounds):
        for name, path in formats.items():
            results[name].append(measure(path, args.threads))
    medians = {name: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
               for name, runs in results.items()}
    for name, (prefill, generate) in medians.items():
        print(f"{name}: 900-token prompt {prefill * 1000:.0f} ms, 50-token prompt + 64 generated {generate * 1000:.0f} ms")
    (p4, g4), (p8, g8) = medians["Q4_1"], medians["Q8_0"]
    print(f"Q8_0 prompt processing {p4 / p8:.2f}x as fast as Q4_1; generation {g8 / g4:.2f}x the time")
    print("same 64 generated tokens:", results["Q4_1"][0][2] == results["Q8_0"][0][2])


if __name__ == "__main__":
    main()
