"""``octogate agent ...``: build the action generator's data, train it, export it for SGLang, evaluate an agent."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from octogate.core.cli_output import err_console, fail, out_console
from octogate.router_model.cli import report_training

if TYPE_CHECKING:
    from rich.console import Console

    from octogate.core.agent_config import ActionGeneratorConfig

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
    out_console().print(f"{counts['trajectories']} tasks: {counts['train']} decisions to {out}/train.jsonl, "
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


def subtask_continuation(example):
    """What the action generator writes after choosing a tool, as serving decodes it
    (``ActionGenerator._decide``): the cue ``Step: [tool] ``, then the sub-task escaped as a protocol
    argument and ended by a newline; ``finish`` and a step without a sub-task have none."""
    from octogate.agents.action import step_line
    from octogate.router_model.protocol import escape_argument

    if example.node == "finish" or not example.reformatted:
        return None
    return step_line(example.node, "") + " ", escape_argument(example.reformatted) + "\n"


def _sample(examples: list, n: int | None, seed: int) -> list:
    if n is None or n >= len(examples):
        return examples
    import random

    return random.Random(seed).sample(examples, n)


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
    sample: Annotated[Optional[int], typer.Option(help="train on a seeded random sample of this many lines")] = None,
    eval_sample: Annotated[Optional[int], typer.Option(help="score a seeded random sample of this many --eval lines")]
    = None,
    max_query_tokens: Annotated[int, typer.Option(min=32, help="action queries are cut to this many tokens")] = 256,
    argument_weight: Annotated[float, typer.Option(
        min=0.0, help="weight of the sub-task text's loss beside the tool's (0, the shipped recipe: the tool tokens only)")]
    = 0.0,
    init_from: Annotated[Optional[Path], typer.Option(
        help="start from a trained action generator (e.g. agents/trained/husky-action) instead of from scratch")]
    = None,
) -> None:
    """Train Husky's action generator with the router trainer (CPU; needs the train extra): the tool
    tokens, and the sub-task text written after each step's cue (``--argument-weight``)."""
    try:
        from octogate.router_model.training.run import train_router
        from octogate.router_model.training.trainer import TrainSettings
    except ImportError as exc:
        fail(f"training needs the train extra (pip install -e '.[train]'): {exc}")
    from octogate.agents.action import ACTION_PREFIX, ACTION_TOKENS

    try:
        examples = _sample(read_decisions(data), sample, seed)
        evals = {p.name: _sample(read_decisions(p), eval_sample, seed) for p in eval_data or []}
        settings = TrainSettings(lora_layers=lora_layers, epochs=epochs, batch_size=batch_size,
                                 max_query_tokens=max_query_tokens, threads=threads, seed=seed,
                                 argument_weight=argument_weight)
        artifact, state, complete = train_router(
            nodes=dict(ACTION_TOKENS), examples=examples, out=out, settings=settings, data_name=data.name,
            time_budget=time_budget * 60 if time_budget else None, eval_sets=evals, console=err_console,
            prefix_text=ACTION_PREFIX, labels="tools", continuation=subtask_continuation, init_from=init_from)
    except (OSError, ValueError) as exc:
        fail(exc)
    report_training(artifact, state, complete, "action generator")


@agent_cli.command("export")
def export_command(
    out: Annotated[Path, typer.Option(help="the .gguf file to write (about 270 MB)")],
    path: Annotated[Optional[Path], typer.Option(help="a trained action generator (default: the shipped one)")]
    = None,
    row_scale: Annotated[float, typer.Option(min=0.01, help="the tool rows are multiplied by this (see docs/husky.md)")]
    = 1.5,
) -> None:
    """Write the action generator as one model an SGLang server can serve (action: {engine: sglang}):
    SmolLM2 with its LoRA merged and <nexa_0>..<nexa_4> in the vocabulary, their rows the trained ones."""
    from octogate.agents.action import ACTION_TOKENS, DEFAULT_ACTION_DIR
    from octogate.router_model.artifact import load_router
    from octogate.router_model.served_model import write_served_model

    source = path or DEFAULT_ACTION_DIR
    try:
        if load_router(source).tokens != ACTION_TOKENS:
            fail(f"{source} is not an action generator: its tokens are not {ACTION_TOKENS}")
        model = write_served_model(source, out, row_scale=row_scale)
    except (OSError, ValueError) as exc:
        fail(exc)
    ids = ", ".join(f"<nexa_{t}> {i}" for t, i in model.token_ids.items())
    out_console().print(f"wrote {out} (vocabulary {model.base_vocab} + {len(model.token_ids)}: {ids}); serve it with "
                        f"the line `octogate router sglang-command --model-path {out}` prints")


@agent_cli.command("eval")
def eval_command(
    data: Annotated[Path, typer.Option(help="action lines (e.g. data/agent/actions/heldout.jsonl): tool accuracy")],
    config: Annotated[Optional[Path], typer.Option(help="graph file whose agent is evaluated")] = None,
    agent: Annotated[str, typer.Option(help="the agent's name in the graph")] = "husky",
    limit: Annotated[Optional[int], typer.Option(help="score a seeded sample of this many action lines")] = None,
    tasks: Annotated[Optional[Path], typer.Option(
        help="whole tasks with answers (heldout_tasks.jsonl) for the end-to-end comparison; needs --url")] = None,
    url: Annotated[Optional[str], typer.Option(help="a running gateway serving the graph, e.g. http://127.0.0.1:8000")]
    = None,
    direct: Annotated[str, typer.Option(help="the node that answers directly, for comparison")] = "general",
    task_limit: Annotated[Optional[int], typer.Option(help="a seeded sample of this many tasks, spread over sources")]
    = None,
    api_key: Annotated[Optional[str], typer.Option(envvar="OCTOGATE_API_KEY")] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """The action generator's first-step and step-by-step tool accuracy; with --tasks and --url, the agent's
    end-to-end answer accuracy against a node answering directly, latency and steps per task."""
    import asyncio

    from rich.table import Table

    from octogate.agents.evaluation import end_to_end, mean, percentile
    from octogate.core.graph import default_config_path
    from octogate.core.jsonl import read_jsonl
    from octogate.router_model.cli import load_graph_or_exit

    graph = load_graph_or_exit((config or default_config_path()).resolve())
    if agent not in graph.agents:
        fail(f"this graph has no agent {agent!r} (agents: {', '.join(graph.agents) or 'none'})")
    if tasks is not None and url is None:
        fail("--tasks needs --url: the end-to-end comparison asks a running gateway")
    console = out_console()
    if graph.agents[agent].action.engine == "embedded":
        _tool_accuracy(graph.agents[agent].action, data, limit, seed, console)
    elif tasks is None:
        fail(f"agent {agent!r} asks an SGLang server: tool accuracy scores the embedded action generator only "
             "(use a graph with action: {engine: embedded, path: ...}); --tasks with --url compares end to end")
    else:
        console.print(f"agent {agent!r} asks an SGLang server: tool accuracy skipped (embedded engine only)")
    if tasks is None:
        return
    try:
        all_tasks = read_jsonl(tasks, dict, "a task ({task, answer, source})")
    except (OSError, ValueError) as exc:
        fail(exc)
    chosen = _spread(all_tasks, task_limit, seed)

    async def both():
        return (await end_to_end(url, agent, chosen, api_key),
                await end_to_end(url, direct, chosen, api_key))

    husky, plain = asyncio.run(both())
    table = Table(title=f"end to end: {len(chosen)} tasks from {tasks.name}")
    for column in ("source", "tasks", agent, direct):
        table.add_column(column)
    for source in sorted(husky.right):
        table.add_row(source, str(husky.count(source)), f"{husky.accuracy(source):.1%}", f"{plain.accuracy(source):.1%}")
    table.add_row("all", str(husky.count()), f"{husky.accuracy():.1%}", f"{plain.accuracy():.1%}")
    console.print(table)
    for r in (husky, plain):
        console.print(f"{r.model}: latency p50 {percentile(r.seconds, 50):.1f} s, p95 {percentile(r.seconds, 95):.1f} s; "
                      f"errors {r.errors}" + (f"; steps per task {mean(r.steps):.2f}; finish reasons "
                                              f"{dict(r.finish)}" if r.steps else ""))


def _tool_accuracy(cfg: ActionGeneratorConfig, data: Path, limit: int | None, seed: int, console: Console) -> None:
    """The embedded action generator's tool accuracy on action lines, printed."""
    from rich.table import Table

    from octogate.agents.action import ActionGenerator
    from octogate.agents.evaluation import percentile, tool_accuracy
    from octogate.core.jsonl import read_jsonl

    try:
        rows = _sample(read_jsonl(data, dict, "an action line"), limit, seed)
    except (OSError, ValueError) as exc:
        fail(exc)
    generator = ActionGenerator(cfg)
    generator._load()  # blocking, on this thread: evaluation only
    try:
        report = tool_accuracy(generator, rows)
    finally:
        generator.selector.close()
    console.print(f"action generator {generator.path.name}: {len(rows)} decisions from {data}")
    console.print(f"first-step tool accuracy {report.accuracy(report.first):.1%} ({len(report.first)} tasks); "
                  f"step-by-step tool accuracy {report.accuracy(report.every):.1%} ({len(report.every)} steps); "
                  f"decision p50 {percentile(report.seconds, 50) * 1000:.0f} ms")
    table = Table(title="per tool (step by step)")
    for column in ("tool", "accuracy", "support"):
        table.add_column(column)
    for tool, (acc, n) in report.per_tool().items():
        table.add_row(tool, f"{acc:.1%}", str(n))
    console.print(table)
    if report.confusions():
        console.print("costliest confusions: " + ", ".join(f"{g} -> {p} ({n})" for g, p, n in report.confusions()))


def _spread(tasks: list, n: int | None, seed: int) -> list:
    """A seeded sample of ``n`` tasks, taken round-robin over their sources so each is represented."""
    if n is None or n >= len(tasks):
        return tasks
    import random

    by: dict[str, list] = {}
    for t in tasks:
        by.setdefault(t["source"], []).append(t)
    rng = random.Random(seed)
    for group in by.values():
        rng.shuffle(group)
    out, i = [], 0
    while len(out) < n:
        for group in by.values():
            if i < len(group) and len(out) < n:
                out.append(group[i])
        i += 1
    return out
