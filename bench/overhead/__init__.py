"""Overhead benchmark: octogate vs. the upstream called directly vs. LiteLLM's proxy.

One run on one machine measures, with ``wrk`` against a canned nginx upstream:

* **direct**   wrk -> nginx
* **octogate** wrk -> ``octogate serve --workers N`` -> nginx
* **litellm**  wrk -> ``litellm --num_workers 1`` (LiteLLM proxy) -> nginx

at 1 and 16 concurrent connections, and reports requests/s, p50 and p99 per cell plus the ratios
the issue sets targets for (octogate rps / LiteLLM rps at 16 connections >= 30; octogate's added
p50 at 1 connection <= 0.6 ms, added = p50 through the proxy - p50 direct). Every figure that is
judged is a ratio or a difference against a baseline measured in the same run, because the
machine is shared and its absolute speed varies from minute to minute.

Run ``.venv/bin/python bench/run.py --help`` for the flags; bench/README.md explains the figures.

The package's modules, in the order a run uses them: ``cli`` (flags and the run loop),
``cpu_layout`` (taskset placement), ``subprocesses`` (process groups, CPU accounting, cleanup on
exit), ``loopback_http`` (requests to 127.0.0.1 with the run's bearer key), ``canned_upstream``
(nginx and its canned answers), ``targets`` (starting direct, octogate and LiteLLM),
``measurement`` (wrk and the per-cell figures), ``verdict`` (ratios and pass/fail) and ``report``
(the printed table); ``paths`` names the files they share.
"""
