"""``octogate fc ...``: function-calling evaluation on BFCL cases against a running gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from octogate.core.cli_output import err_console, fail, out_console

fc_cli = typer.Typer(no_args_is_help=True, help="Function calling: evaluation on BFCL cases.")


@fc_cli.command("eval")
def fc_eval_command(
    data: Annotated[Path, typer.Option(help="BFCL cases, e.g. data/function_calling/bfcl_multiple.jsonl")],
    base_url: Annotated[str, typer.Option(help="a running gateway's /v1 URL")] = "http://127.0.0.1:8000/v1",
    model: Annotated[str, typer.Option(help="the node to ask")] = "general",
    api_key: Annotated[str, typer.Option(envvar="OPENAI_API_KEY", help="bearer key, if the gateway wants one")] = "unused",
    limit: Annotated[Optional[int], typer.Option(help="the first N cases only")] = None,
    mode: Annotated[Optional[list[str]], typer.Option(
        help="toolset, constrained and/or unconstrained (default: constrained and unconstrained)")] = None,
    max_tokens: Annotated[int, typer.Option(min=1)] = 256,
) -> None:
    """Selection accuracy, BFCL argument accuracy, valid-argument rate and latency, with and without constraints."""
    import openai
    from rich.progress import Progress

    from octogate.adapters.tool_calling.evaluation.bfcl import read_cases
    from octogate.adapters.tool_calling.evaluation.runner import (
        DEFAULT_MODES,
        MODES,
        evaluate,
    )

    modes = mode or list(DEFAULT_MODES)
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        fail(f"unknown mode {', '.join(unknown)} (modes: {', '.join(MODES)})")
    try:
        cases = read_cases(data)[:limit]
    except (OSError, ValueError) as exc:
        fail(exc)
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=300)
    with Progress(console=err_console) as progress:
        task = progress.add_task(f"{len(cases)} cases", total=len(cases))
        reports = evaluate(client, model, cases, modes, max_tokens, lambda: progress.advance(task))
    table = Table(title=f"{data.name}: {len(cases)} cases, model {model}")
    for column in ("", *modes):
        table.add_column(column)
    rows = [
        ("function selection", lambda r: f"{r.rate(r.right_function):.1%}"),
        ("arguments (BFCL rules)", lambda r: f"{r.rate(r.right_arguments):.1%}"),
        ("made a call", lambda r: f"{r.rate(r.called):.1%}"),
        ("calls with valid arguments", lambda r: f"{r.rate(r.valid_calls, r.calls):.1%} of {r.calls}"),
        ("failed requests", lambda r: str(r.errors)),
        ("prompt tokens (mean)", lambda r: f"{r.prompt_tokens / max(1, r.total - r.errors):.0f}"),
        ("latency p50 / p95", lambda r: f"{r.percentile(50) * 1000:.0f} / {r.percentile(95) * 1000:.0f} ms"),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(reports[m]) for m in modes))
    out_console().print(table)
