"""``octogate agent ...``: build the action generator's data, train it, evaluate an agent."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from octogate.core.cli_output import err_console, fail

agent_cli = typer.Typer(no_args_is_help=True, help="Agents served as models (Husky).")
REPO_DATA = Path("data/agent")


@agent_cli.command("build-data")
def build_data_command(
    source: Annotated[Path, typer.Option(help="folder with the Husky sets (gsm8k/strategyqa/hotpotqa/bamboogle.jsonl)")]
    = REPO_DATA,
    out: Annotated[Path, typer.Option(help="where train.jsonl, heldout.jsonl and heldout_tasks.jsonl go")]
    = REPO_DATA / "actions",
    docs: Annotated[Path, typer.Option(help="the local search folder to write (facts.jsonl)")]
    = Path("agents/docs"),
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write the action generator's trajectories (steps known by construction) and the search documents."""
    from octogate.agents.trajectories import write_data

    try:
        counts = write_data(source, out, docs, seed)
    except (OSError, KeyError, ValueError) as exc:
        fail(exc)
    Console().print(f"{counts['trajectories']} tasks: {counts['train']} decisions to {out}/train.jsonl, "
                    f"{counts['heldout']} held out ({counts['heldout_tasks']} tasks); "
                    f"{counts['documents']} documents to {docs}/facts.jsonl")


def read_decisions(path: Path):
    """Action lines as routing examples: the query is exactly what the action generator reads."""
    from octogate.agents.action import Step, action_query
    from octogate.core.jsonl import read_jsonl
    from octogate.router_model.training.data import Example

    def parse(row):
        history = [Step(h["tool"], h["subtask"], h.get("output", "")) for h in row["history"]]
        return Example(action_query(row["task"], history), str(row["tool"]), row.get("subtask") or None)

    return read_jsonl(path, parse, 'an action line ({"task", "history", "tool", "subtask"})')


@agent_cli.command("train")
def train_command(
    data: Annotated[Path, typer.Option(help="action lines: JSONL of {task, history, tool, subtask}")]
    = REPO_DATA / "actions" / "train.jsonl",
    out: Annotated[Path, typer.Option(help="directory for the trained action generator (resumable)")]
    = Path("agents/trained/husky-action"),
    eval_data: Annotated[Optional[list[Path]], typer.Option("--eval", help="action lines to score after each epoch")]
    = None,
    time_budget: Annotated[Optional[float], typer.Option(help="minutes, then checkpoint and stop; rerun to resume")]
    = None,
    epochs: Annotated[float, typer.Option(min=0.01)] = 2.0,
    lora_layers: Annotated[int, typer.Option(min=1)] = 8,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    threads: Annotated[int, typer.Option(min=0)] = 0,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Train the tool tokens of Husky's action generator with the router trainer (CPU; needs the train extra)."""
    try:
        from octogate.router_model.training.trainer import TrainSettings, train_router
    except ImportError as exc:
        fail(f"training needs the train extra (pip install -e '.[train]'): {exc}")
    from octogate.agents.action import ACTION_PREFIX, ACTION_TOKENS, MAX_QUERY_TOKENS

    try:
        examples = read_decisions(data)
        evals = {p.name: read_decisions(p) for p in eval_data or []}
        settings = TrainSettings(lora_layers=lora_layers, epochs=epochs, batch_size=batch_size,
                                 max_query_tokens=MAX_QUERY_TOKENS, threads=threads, seed=seed)
        artifact, state, complete = train_router(
            nodes=dict(ACTION_TOKENS), examples=examples, out=out, settings=settings, data_name=data.name,
            time_budget=time_budget * 60 if time_budget else None, eval_sets=evals, console=err_console,
            prefix_text=ACTION_PREFIX, labels="tools")
    except (OSError, ValueError) as exc:
        fail(exc)
    console = Console()
    for row in state.history:
        scores = ", ".join(f"{k} {v:.1%}" for k, v in row.items() if k not in ("step", "seconds"))
        console.print(f"step {row['step']} ({row['seconds']:.0f} s): {scores}")
    if complete:
        console.print(f"action generator written to {artifact.path} ({state.step} steps, {state.seconds / 60:.1f} min)")
    else:
        console.print(f"time budget reached at step {state.step}/{state.total_steps}; {artifact.path} is usable but "
                      "unfinished: run the same command again to resume from its checkpoint")
