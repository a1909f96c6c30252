"""The bottom layer every other package stands on: the graph config schema, the OpenAI protocol
models, the errors every layer raises, client JSON Schemas and tool plans, and llama.cpp plumbing.
It imports nothing of octogate's own above it (docs/architecture.md)."""
