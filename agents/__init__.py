"""Agents served as models of the graph (Husky, arXiv 2406.06469): a loop over one decision.

This layer stands between the gateway and (adapters | router_model): it may import
``octogate.router_model`` and ``octogate.core``, never ``octogate.gateway``. Experts are reached
through the ``ask`` callable the gateway hands in (``agents/husky.py``).
"""
