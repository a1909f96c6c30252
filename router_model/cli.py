"""``octogate router ...``: the functional-token router's commands (SGLang launch line, MMLU
conversion, training, averaging, prior correction, evaluation)."""

from __future__ import annotations

from enum import Enum
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from octogate.core.cli_output import err_console, fail, out_console
from octogate.core.graph import ConfigError, GraphConfig, default_config_path, load_graph
from octogate.router_model.training.data import CHOICES as MMLU_CHOICES


def load_graph_or_exit(path: Path) -> GraphConfig:
    from octogate.router_model.toolsets import ToolsetError, ToolsetRegistry

    try:
        graph = load_graph(path)
        ToolsetRegistry.from_graph(graph)  # each toolset's tool schemas, checked as a request's would be
        return graph
    except (ConfigError, ToolsetError) as exc:
        err_console.print(f"[bold red]invalid config[/]\n{exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


router_cli = typer.Typer(no_args_is_help=True, help="The functional-token router.")


@router_cli.command("sglang-command")
def sglang_command(
    model_path: Annotated[str, typer.Option(help="the router model (a local directory or hub id on the GPU host)")],
    config: Annotated[Optional[Path], typer.Option(help="graph file; its router.base_url gives the port")] = None,
    port: Annotated[Optional[int], typer.Option(help="port [default: from the graph's router.base_url, else 30000]")] = None,
    host: Annotated[str, typer.Option(help="address SGLang listens on")] = "127.0.0.1",
    grammar_backend: Annotated[str, typer.Option(help="xgrammar, outlines or llguidance")] = "xgrammar",
) -> None:
    """Print the exact SGLang launch line that serves the router for a graph (needs a CUDA GPU and
    `pip install 'octogate[sglang]'` on that host)."""
    import shlex
    from urllib.parse import urlsplit

    from octogate.router_model.sglang_engine import sglang_launch_command

    graph = load_graph_or_exit((config or default_config_path()).resolve())
    if port is None:
        base = graph.router.base_url if graph.router else ""
        port = (urlsplit(base).port if base and not base.startswith("env:") else None) or 30000
    try:
        argv = sglang_launch_command(model_path, port=port, host=host, grammar_backend=grammar_backend)
    except ValueError as exc:
        fail(exc)
    print(shlex.join(argv))


MmluChoices = Enum("MmluChoices", {form: form for form in MMLU_CHOICES}, type=str)  # typer's choices


@router_cli.command("convert-mmlu")
def convert_mmlu_command(
    source: Annotated[Path, typer.Argument(help="an MMLU file, e.g. data/routing/mmlu_train.jsonl")],
    out: Annotated[Path, typer.Option(help="where to write the routing examples (JSONL)")],
    holdout_out: Annotated[Optional[Path], typer.Option(
        help="also split off a held-out set (by a hash of each question's id) into this file")] = None,
    holdout_percent: Annotated[int, typer.Option(min=1, max=50, help="share of questions held out")] = 10,
    choices: Annotated[MmluChoices, typer.Option(
        help="for --out: the question alone (omit), followed by its answer choices (append), or one of each (both)"
    )] = MmluChoices.omit,
    holdout_choices: Annotated[MmluChoices, typer.Option(help="the same for --holdout-out")] = MmluChoices.omit,
    chat_form: Annotated[bool, typer.Option(
        help="for --out: also write each question's short chat-style form (exam scaffolding removed)")] = False,
) -> None:
    """Turn MMLU questions (question, choices, category) into routing examples (query, node)."""
    import orjson

    from octogate.router_model.training.data import convert_mmlu, held_out

    with open(source, "rb") as f:
        rows = [orjson.loads(line) for line in f if line.strip()]
    kept = [r for r in rows if holdout_out is None or not held_out(r["id"], holdout_percent)]

    def write(path: Path, questions: list[dict], form: MmluChoices, chat: bool = False) -> int:
        with open(path, "wb") as f:
            examples = list(convert_mmlu(questions, form.value, chat))
            f.write(b"".join(orjson.dumps(example) + b"\n" for example in examples))
        return len(examples)

    message = f"{write(out, kept, choices, chat_form)} examples ({len(kept)} questions) written to {out}"
    if holdout_out is not None:
        held = [r for r in rows if held_out(r["id"], holdout_percent)]
        message += f", {write(holdout_out, held, holdout_choices)} ({len(held)} questions) held out to {holdout_out}"
    out_console().print(message)


@router_cli.command("train")
def train_command(
    data: Annotated[Path, typer.Option(help="routing examples: JSONL of {query, node, reformatted?}")],
    out: Annotated[Path, typer.Option(help="directory for the trained router (a few MB; resumable)")],
    config: Annotated[Optional[Path], typer.Option(help="graph whose nodes get functional tokens")] = None,
    toolset: Annotated[Optional[str], typer.Option(
        help="train the graph's registered toolset of this name instead: data lines {query, function}")] = None,
    eval_data: Annotated[Optional[list[Path]], typer.Option(
        "--eval", help="examples to score after each epoch (repeatable)")] = None,
    time_budget: Annotated[Optional[float], typer.Option(
        help="minutes of training, then checkpoint and stop; rerun the same command to resume")] = None,
    epochs: Annotated[float, typer.Option(min=0.01)] = 3.0,
    lora_layers: Annotated[int, typer.Option(min=1, help="LoRA on the top N blocks (SmolLM2 has 30)")] = 12,
    rank: Annotated[int, typer.Option(min=1)] = 16,
    alpha: Annotated[float, typer.Option()] = 32.0,
    lr: Annotated[float, typer.Option(help="LoRA learning rate")] = 5e-4,
    token_lr: Annotated[float, typer.Option(help="learning rate of the new token rows")] = 2e-3,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    max_query_tokens: Annotated[int, typer.Option(min=8)] = 128,
    threads: Annotated[int, typer.Option(min=0, help="torch threads (0: all cores)")] = 0,
    seed: Annotated[int, typer.Option()] = 0,
    subject_weight: Annotated[float, typer.Option(min=0.0, help=(
        "also learn each example's subject (convert-mmlu keeps MMLU's) as an auxiliary target, "
        "with this weight on its loss (0: off)"))] = 0.0,
) -> None:
    """Train functional tokens for a graph's nodes on this CPU (needs the [train] extra: torch, gguf)."""
    try:
        from octogate.router_model.training.run import train_router
        from octogate.router_model.training.trainer import TrainSettings
    except ImportError as exc:
        fail(f"training needs the train extra (pip install -e '.[train]'): {exc}")
    from octogate.router_model.training.data import read_examples

    graph = load_graph_or_exit((config or default_config_path()).resolve())
    prompt: dict[str, str] = {}
    if toolset is not None:
        from octogate.router_model.toolsets import TOOLSET_PREFIX, Toolset, ToolsetError
        from octogate.router_model.training.data import read_toolset_examples

        if toolset not in graph.toolsets:
            fail(f"this graph registers no toolset {toolset!r} (toolsets: {', '.join(graph.toolsets) or 'none'})")
        ts = graph.toolsets[toolset]
        try:
            registered = Toolset.from_config(toolset, ts.tools, ts.path, ts.threads)
        except ToolsetError as exc:
            fail(exc)
        nodes, read, prompt = registered.labels(), partial(read_toolset_examples, registered), {"prefix_text": TOOLSET_PREFIX,
                                                                              "labels": "functions"}
    else:
        nodes, read = {n.token: n.name for n in graph.nodes if n.token is not None}, read_examples
        if not nodes:
            fail("no node in this graph has a functional token (`token:`)")
    try:
        examples = read(data)
        evals = {p.name: read(p) for p in eval_data or []}
        settings = TrainSettings(lora_layers=lora_layers, rank=rank, alpha=alpha, lr=lr, token_lr=token_lr,
                                 epochs=epochs, batch_size=batch_size, max_query_tokens=max_query_tokens,
                                 threads=threads, seed=seed, subject_weight=subject_weight)
        artifact, state, complete = train_router(
            nodes=nodes, examples=examples, out=out, settings=settings, data_name=data.name,
            time_budget=time_budget * 60 if time_budget else None, eval_sets=evals, console=err_console, **prompt)
    except (OSError, ValueError) as exc:
        fail(exc)
    report_training(artifact, state, complete, "trained router", "the router in ")


def report_training(artifact: Any, state: Any, complete: bool, made: str, where: str = "") -> None:
    """What a training command prints: each evaluation's scores, then whether the model in
    ``artifact.path`` (``made``: what it is) is finished or resumes from its checkpoint."""
    console = out_console()
    for row in state.history:
        scores = ", ".join(f"{k} {v:.1%}" for k, v in row.items() if k not in ("step", "seconds"))
        console.print(f"step {row['step']} ({row['seconds']:.0f} s): {scores}")
    if complete:
        console.print(f"{made} written to {artifact.path} ({state.step} steps, {state.seconds / 60:.1f} min)")
    else:
        console.print(f"time budget reached at step {state.step}/{state.total_steps}; {where}{artifact.path} "
                      "is usable but unfinished: run the same command again to resume from its checkpoint")


@router_cli.command("average")
def average_command(
    routers: Annotated[list[Path], typer.Argument(help="two or more `router train` outputs for the same graph")],
    out: Annotated[Path, typer.Option(help="directory to write the averaged router to")],
) -> None:
    """One router whose weights are the mean of several trained for the same graph (a model soup); decisions cost the same."""
    from octogate.router_model.artifact import load_router
    from octogate.router_model.training.averaging import average_routers

    try:
        artifact = average_routers(routers, out)
    except (OSError, ValueError) as exc:  # a RouterArtifactError is a ValueError
        fail(exc)
    size = sum(p.stat().st_size for p in artifact.path.iterdir()) / 1e6
    out_console().print(f"average of {len(routers)} routers written to {artifact.path} "
                    f"(LoRA rank {artifact.manifest['lora']['rank']}, {size:.1f} MB)")
    if "prior" not in artifact.manifest and any("prior" in load_router(r).manifest for r in routers):
        out_console().print("the parts' prior corrections differ, so the average has none: "
                        f"set one with `octogate router prior {artifact.path} --data ...`")


@router_cli.command("prior")
def prior_command(
    router: Annotated[Path, typer.Argument(help="a trained router directory (its router.json is updated)")],
    data: Annotated[Optional[Path], typer.Option(
        help="the routing examples it was trained on: their node mix is what gets taken out")] = None,
    target: Annotated[str, typer.Option(help="the prior decisions should assume: uniform (no node favoured)")] = "uniform",
    tau: Annotated[float, typer.Option(min=0.0, help="strength; 1 is the Bayes decision for the target, 0 removes the correction")] = 1.0,
) -> None:
    """Take the training data's node mix out of a router's scores (logit adjustment), so big nodes stop winning close calls."""
    from octogate.router_model.prior import TARGETS
    from octogate.router_model.training.data import read_examples
    from octogate.router_model.training.prior_fit import set_prior

    if target not in TARGETS:
        fail(f"--target must be one of {', '.join(TARGETS)}, not {target!r}")
    if tau != 0 and data is None:
        fail("--data is needed: the routing examples the router was trained on")
    try:
        labels = [e.node for e in read_examples(data)] if tau != 0 else None
        artifact = set_prior(router, labels, target=target, tau=tau, data=data.name if data else None)
    except (OSError, ValueError) as exc:  # RouterArtifactError and PriorError are ValueErrors
        fail(exc)
    prior = artifact.manifest.get("prior")
    if prior is None:
        out_console().print(f"{artifact.path}: no prior correction; decisions score as trained")
        return
    bias = dict(zip(artifact.tokens.values(), artifact.score_bias(list(artifact.tokens)).tolist()))
    shown = ", ".join(f"{node} {b:+.2f}" for node, b in sorted(bias.items(), key=lambda kv: kv[1]))
    out_console().print(f"{artifact.path}: {target} prior, tau {tau:g}, from {prior.get('data')}; score bias: {shown}")


@router_cli.command("eval")
def eval_command(
    data: Annotated[Path, typer.Option(help="routing examples: JSONL of {query, node}")],
    config: Annotated[Optional[Path], typer.Option(help="graph file with a router: block")] = None,
    limit: Annotated[Optional[int], typer.Option(help="evaluate the first N examples only")] = None,
    prior_correction: Annotated[Optional[bool], typer.Option(
        "--prior-correction/--no-prior-correction",
        help="apply the router's prior correction, or score as trained [default: the graph's setting]")] = None,
) -> None:
    """Top-1 accuracy, per-node precision/recall, costly confusions and decision latency of a graph's router."""
    import asyncio

    from octogate.router_model.engine import RouterEngineError
    from octogate.router_model.engine_factory import RoutingPoint
    from octogate.router_model.evaluation import evaluate
    from octogate.router_model.training.data import read_examples

    graph = load_graph_or_exit((config or default_config_path()).resolve())
    if graph.router is None:
        fail("this graph has no router: block to evaluate")
    try:
        examples = read_examples(data)[:limit]
    except (OSError, ValueError) as exc:
        fail(exc)
    if prior_correction is not None:
        graph = graph.model_copy(update={"router": graph.router.model_copy(update={"prior_correction": prior_correction})})
    point = RoutingPoint.for_graph(graph)

    async def run():
        await point.engine.start()
        try:
            async def decide(query: str) -> str | None:
                try:
                    return (await asyncio.wait_for(point.engine.decide(query), point.timeout)).node
                except (RouterEngineError, asyncio.TimeoutError):
                    return None
            return await evaluate(examples, decide)
        finally:
            await point.engine.aclose()

    report = asyncio.run(run())
    console = out_console()
    console.print(f"{report.total} examples: top-1 accuracy {report.accuracy:.1%} "
                  f"({report.correct} right, {report.failures} without a decision)")
    console.print(f"decision latency: p50 {report.percentile(50) * 1000:.1f} ms, p95 {report.percentile(95) * 1000:.1f} ms")
    artifact = getattr(getattr(point.engine, "selector", None), "artifact", None)  # embedded engines only
    if artifact is not None:
        prior = artifact.manifest.get("prior")
        console.print("prior correction: " + (
            "none in this router" if prior is None else
            f"{prior['target']}, tau {prior['tau']:g}" + ("" if graph.router.prior_correction else " (turned off)")))
    table = Table(title="per node")
    for column in ("node", "precision", "recall", "support"):
        table.add_column(column)
    for node, (precision, recall, support) in report.per_node().items():
        table.add_row(node, f"{precision:.1%}", f"{recall:.1%}", str(support))
    console.print(table)
    confusions = Table(title="costliest confusions")
    for column in ("expected", "routed to", "count"):
        confusions.add_column(column)
    for gold, predicted, n in report.confusions():
        confusions.add_row(gold, predicted, str(n))
    console.print(confusions)
