"""The functional-token router (Octopus v2/v4): a small model that answers a query with the token of
the node that should take it, e.g. ``<nexa_4>('Solve x^2 = 9.')<nexa_end>``.

- ``protocol``: the router's prompt, its output format, the grammars that constrain decoding to a
  graph's tokens, and the strict parser. Everything that produces or reads router text uses it.
- ``engine``: what the gateway asks of a router (``decide(query)``) and the error it raises.
- ``sglang_engine``: that interface over an SGLang server's native ``/generate`` (GPU serving).
"""
