#!/usr/bin/env python3
"""Run the overhead benchmark: ``.venv/bin/python bench/run.py [flags]`` (``--help`` lists them).

The benchmark itself is the package bench/overhead/ (its docstring says what one run measures,
and which module holds what); bench/README.md explains the figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH_DIR = str(Path(__file__).resolve().parent)
if BENCH_DIR not in sys.path:  # python puts it there when run as a script; not when imported
    sys.path.insert(0, BENCH_DIR)

from overhead.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
