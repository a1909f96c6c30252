"""Where the benchmark's files are: the bench directory, the repository it sits in, the wrk
script that POSTs the request and prints its figures, and the (gitignored) results directory."""

from __future__ import annotations

from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO = BENCH_DIR.parent
WRK_SCRIPT = BENCH_DIR / "wrk_post.lua"
RESULTS_DIR = BENCH_DIR / "results"
