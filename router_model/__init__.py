"""The functional-token router (Octopus v2/v4): a small model that answers a query with the token of
the node that should take it, e.g. ``<nexa_4>('Solve x^2 = 9.')<nexa_end>``.

- ``protocol``: the router's prompt, its output format, the grammars that constrain decoding to a
  graph's tokens, and the strict parser. Everything that produces or reads router text uses it.
- ``engine``, ``engine_factory``: what the gateway asks of a router (``decide(query)``), and the
  engines built from a graph: ``embedded_engine`` (llama.cpp on the CPU) or ``sglang_engine``.
- ``artifact``, ``token_selector``, ``merged_model``, ``prior``: a trained router on disk and the
  one-token scoring that reads it; ``toolsets``: the same for a fixed set of functions (Octopus v2).
- ``training/`` and ``evaluation``: offline only; ``cli``: the ``octogate router`` commands.
"""
