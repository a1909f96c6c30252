"""The ``octogate`` command: ``serve`` a graph and ``check-config`` a graph file here; the
``router``, ``fc`` and ``agent`` command groups live beside the code they drive."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from octogate.adapters.tool_calling.evaluation.cli import fc_cli
from octogate.agents.cli import agent_cli
from octogate.core.cli_output import out_console
from octogate.core.graph import CONFIG_ENV, default_config_path
from octogate.gateway.metrics import prepare_multiprocess_dir
from octogate.router_model.cli import load_graph_or_exit, router_cli
from octogate.router_model.protocol import functional_token

cli = typer.Typer(add_completion=False, no_args_is_help=True, help="An OpenAI-compatible gateway over a graph of specialist models.")


@cli.command()
def serve(
    config: Annotated[Optional[Path], typer.Option(help=f"graph file [default: ${CONFIG_ENV} or config/default.yaml]")] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="worker processes")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    access_log: Annotated[bool, typer.Option(help="log every request (costs throughput)")] = False,
) -> None:
    """Serve the graph's nodes behind /v1/chat/completions."""
    import uvicorn

    from octogate.gateway.http_protocol import LIMITS_ENV, LimitedHttpProtocol

    path = (config or default_config_path()).resolve()
    graph = load_graph_or_exit(path)  # fail fast, with a readable message, before any worker starts
    os.environ[CONFIG_ENV] = str(path)
    http = graph.server.http
    os.environ[LIMITS_ENV] = json.dumps(http.model_dump(include={"max_header_bytes", "header_timeout", "body_timeout"}))
    prepare_multiprocess_dir(workers)  # before any worker imports prometheus_client
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["octogate"] = {"handlers": ["default"], "level": log_level.upper(), "propagate": False}
    uvicorn.run(
        "octogate.gateway.app:app_from_env", factory=True, host=host, port=port, workers=workers,
        loop="uvloop", http=LimitedHttpProtocol, log_level=log_level, log_config=log_config, access_log=access_log,
        limit_concurrency=http.max_connections, timeout_keep_alive=http.keepalive_seconds,
        # SIGTERM: stop accepting, let requests and streams in flight finish for this long, then exit
        timeout_graceful_shutdown=graph.server.shutdown_grace_seconds,
    )


@cli.command("check-config")
def check_config(path: Annotated[Path, typer.Argument(help="graph file to validate")]) -> None:
    """Validate a graph file and print its nodes; exit 1 with the problems otherwise."""
    graph = load_graph_or_exit(path)
    table = Table(title=f"{path}: {len(graph.nodes)} nodes")
    for column in ("node", "token", "backend", "adapter", "persona"):
        table.add_column(column)
    for node in graph.nodes:
        backend = graph.backend_of(node)
        table.add_row(
            node.name,
            "" if node.token is None else functional_token(node.token),
            backend.model + (f" @ {backend.api_base}" if backend.api_base else ""),
            backend.kind,
            "yes" if node.persona else "",
        )
    out_console().print(table)


cli.add_typer(router_cli, name="router")
cli.add_typer(fc_cli, name="fc")
cli.add_typer(agent_cli, name="agent")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
