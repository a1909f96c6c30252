"""Tool calling for models without it, by constrained decoding: the prompt that lists the tools,
the grammars, reading calls back, decoding on the embedded model, and structured tool calls for
remote models (``structured``); ``evaluation`` scores it on BFCL cases."""
