"""Routing evaluation: the figures on known decisions, and the CLI against a router served over SGLang's protocol."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import orjson
import yaml

from octogate.router_model.evaluation import evaluate
from octogate.router_model.training.chat_form import chat_form
from octogate.router_model.training.data import Example, held_out, read_examples
from tests.conftest import REPO
from tests.sglang_server import SGLangDouble

DATA = REPO / "data" / "routing"


def test_report_figures_on_known_decisions():
    examples = [Example("q1", "math"), Example("q2", "math"), Example("q3", "law"), Example("q4", "law"),
                Example("q5", "physics")]
    answers = {"q1": "math", "q2": "physics", "q3": "law", "q4": "math", "q5": None}

    async def decide(query):
        return answers[query]

    report = asyncio.run(evaluate(examples, decide))
    assert report.total == 5 and report.correct == 2 and report.failures == 1
    assert report.accuracy == 0.4
    per_node = report.per_node()
    assert per_node["math"] == (0.5, 0.5, 2)     # math predicted twice, right once; 2 gold, 1 found
    assert per_node["law"] == (1.0, 0.5, 2)
    assert per_node["physics"] == (0.0, 0.0, 1)
    assert report.confusions() == [("law", "math", 1), ("math", "physics", 1), ("physics", "(no decision)", 1)]
    assert len(report.latencies) == 5 and report.percentile(50) >= 0


def test_convert_mmlu_from_the_kept_data(tmp_path):
    out = tmp_path / "dev.jsonl"
    result = subprocess.run([sys.executable, "-m", "octogate.gateway.cli", "router", "convert-mmlu",
                             str(DATA / "mmlu_dev.jsonl"), "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    examples = read_examples(out)
    assert len(examples) == 285
    first = orjson.loads((DATA / "mmlu_dev.jsonl").read_bytes().splitlines()[0])
    assert examples[0] == Example(first["question"], first["category"], subject=first["subject"])


def test_convert_mmlu_with_answer_choices_and_a_held_out_split(tmp_path):
    out, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    result = subprocess.run([sys.executable, "-m", "octogate.gateway.cli", "router", "convert-mmlu",
                             str(DATA / "mmlu_dev.jsonl"), "--out", str(out), "--choices", "both",
                             "--holdout-out", str(held), "--holdout-percent", "20"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = [orjson.loads(line) for line in (DATA / "mmlu_dev.jsonl").read_bytes().splitlines()]
    kept, held_rows = [r for r in rows if not held_out(r["id"], 20)], [r for r in rows if held_out(r["id"], 20)]
    assert kept and held_rows
    train = read_examples(out)
    assert len(train) == 2 * len(kept)  # each question alone, then with its choices
    first = kept[0]
    lettered = "\n".join(f"{letter}. {choice}" for letter, choice in zip("ABCD", first["choices"]))
    assert train[:2] == [Example(first["question"], first["category"], subject=first["subject"]),
                         Example(f"{first['question']}\n{lettered}", first["category"], subject=first["subject"])]
    assert read_examples(held) == [Example(r["question"], r["category"], subject=r["subject"])
                                   for r in held_rows]  # held out: plain
    assert f"{len(train)} examples ({len(kept)} questions)" in " ".join(result.stdout.split())

    bad = subprocess.run([sys.executable, "-m", "octogate.gateway.cli", "router", "convert-mmlu",
                          str(DATA / "mmlu_dev.jsonl"), "--out", str(out), "--choices", "some"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "some" in bad.stderr


def test_convert_mmlu_adds_the_chat_form_of_each_question(tmp_path):
    out = tmp_path / "train.jsonl"
    result = subprocess.run([sys.executable, "-m", "octogate.gateway.cli", "router", "convert-mmlu",
                             str(DATA / "mmlu_dev.jsonl"), "--out", str(out), "--chat-form"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = [orjson.loads(line) for line in (DATA / "mmlu_dev.jsonl").read_bytes().splitlines()]
    expected = [Example(q, r["category"], subject=r["subject"])
                for r in rows for q in (r["question"], chat_form(r["question"]))]
    assert read_examples(out) == expected


def test_eval_cli_against_an_sglang_router(tmp_path):
    sglang = SGLangDouble().start()
    try:
        sglang.reset(text="<nexa_4>")  # this "router" always answers math
        graph = tmp_path / "g.yaml"
        graph.write_text(yaml.safe_dump({
            "router": {"engine": "sglang", "base_url": sglang.base_url, "fallback": "general"},
            "nodes": [{"name": n, "token": t, "backend": {"model": "openai/x"}}
                      for n, t in (("physics", 0), ("math", 4), ("general", 16))]}))
        data = tmp_path / "data.jsonl"
        data.write_bytes(b"".join(orjson.dumps({"query": f"q{i}", "node": n}) + b"\n"
                                  for i, n in enumerate(["math", "math", "math", "physics"])))
        result = subprocess.run([sys.executable, "-m", "octogate.gateway.cli", "router", "eval", "--config", str(graph),
                                 "--data", str(data)], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "4 examples: top-1 accuracy 75.0% (3 right, 0 without a decision)" in result.stdout
        assert "p50" in result.stdout and "p95" in result.stdout
        assert len(sglang.requests) == 4
        lines = [line for line in result.stdout.splitlines() if "physics" in line and "math" in line]
        assert lines, result.stdout  # the physics -> math confusion is listed
    finally:
        sglang.stop()


def test_eval_needs_a_router(tmp_path):
    graph = tmp_path / "g.yaml"
    graph.write_text("nodes:\n  - {name: a, backend: {model: openai/x}}\n")
    data = tmp_path / "d.jsonl"
    data.write_text('{"query": "x", "node": "a"}\n')
    result = subprocess.run([sys.executable, "-m", "octogate.gateway.cli", "router", "eval", "--config", str(graph),
                             "--data", str(data)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "no router" in result.stderr
