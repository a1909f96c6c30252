"""The ASGI app: serving chat completions and models, auth, routing, conversations, metrics, tracing, and the ``octogate`` CLI."""
