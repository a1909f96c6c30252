"""Husky's action generator on SGLang (``action: {engine: sglang}``, agents/action_sglang.py) against
the protocol double of SGLang's native API (tests/sglang_server.py), on loopback.

Checked: the exact /generate body of each decision (prompt, regex, sampling parameters; ``finish``
excluded from the first decision's regex only), how answers and failures become steps or
``ActionError``s, the config keys and their errors, the exported model (``octogate agent export``,
loaded in llama.cpp on the CPU), and whole husky requests through a real
``octogate serve`` with the real openai SDK, its experts a scripted upstream on loopback: the
agent answers 200 whether the action generator's server answers, is down or answers garbage, and
/readyz says which. SGLang itself is not run here (no GPU): only its documented protocol.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys

import httpx
import pytest

from octogate.agents.action import (
    ACTION_PREFIX,
    ACTION_SUFFIX,
    ACTION_SYSTEM_PROMPT,
    ActionError,
    ActionGenerator,
    Step,
    action_grammar,
    action_query,
)
from octogate.agents.action_sglang import SGLangActionGenerator, first_step_grammar
from octogate.agents.husky import Husky, build_action_generator
from octogate.core.agent_config import TOOLS, ActionGeneratorConfig, AgentConfig
from octogate.core.graph import ConfigError, load_graph
from octogate.router_model.protocol import chatml_prompt, format_router_output, functional_token
from octogate.router_model.sglang_engine import phi3_prompt
from tests.conftest import REPO
from tests.loopback import free_port
from tests.sglang_server import MODEL_PATH, SGLangDouble

TASK = "If a map has 1 square inch for 100 square miles, how many square inches larger is Texas than Washington?"
HISTORY = [Step("search", "Find the area of Texas", "Texas: Texas is a state of the United States. "
                "Its capital is Austin. Texas has a total area of 268,596 square miles.")]
FRAME = len("<nexa_0>('')<nexa_end>")


@pytest.fixture(scope="module")
def server():
    double = SGLangDouble().start()
    yield double
    double.stop()


@pytest.fixture()
def sglang(server):
    server.reset()
    return server


def config(url: str, **kwargs) -> ActionGeneratorConfig:
    return ActionGeneratorConfig(engine="sglang", base_url=url, **kwargs)


def decide(cfg: ActionGeneratorConfig, task: str = TASK, history: list[Step] | None = None) -> tuple[str, str]:
    """One decision on a fresh generator (started and closed around it)."""

    async def main() -> tuple[str, str]:
        generator = SGLangActionGenerator(cfg)
        await generator.start()
        try:
            return await generator.decide(task, history or [])
        finally:
            await generator.aclose()

    return asyncio.run(main())


def failure(cfg: ActionGeneratorConfig, history: list[Step] | None = None) -> str:
    with pytest.raises(ActionError) as exc:
        decide(cfg, history=history)
    return str(exc.value)


# ------------------------------------------------------------------------------ the request
def test_the_first_decision_sends_the_trained_prompt_and_a_regex_without_finish(sglang):
    sglang.reset(text=format_router_output(2, "Find the area of Texas"))
    assert decide(config(sglang.base_url)) == ("search", "Find the area of Texas")
    [req] = sglang.requests
    first_regex = first_step_grammar().regex("select+reformat")
    assert req.body == {
        "text": chatml_prompt([{"role": "system", "content": ACTION_SYSTEM_PROMPT},
                               {"role": "user", "content": action_query(TASK, [])}]),
        "sampling_params": {"max_new_tokens": FRAME + 48 + 1, "temperature": 0, "regex": first_regex,
                            "skip_special_tokens": False, "spaces_between_special_tokens": False},
    }
    # byte for byte the prompt the shipped artifact was trained under (its router.json)
    prompt = json.loads((REPO / "agents" / "trained" / "husky-action" / "router.json").read_text())["prompt"]
    assert req.body["text"] == prompt["prefix"] + action_query(TASK, []) + prompt["suffix"]
    assert "<nexa_4>" not in first_regex
    assert re.fullmatch(first_regex, "<nexa_4>('')<nexa_end>") is None
    for token in range(4):
        assert re.fullmatch(first_regex, format_router_output(token, "a sub-task"))
    assert req.regex_matched


def test_later_decisions_see_the_history_and_may_finish(sglang):
    sglang.reset(text=format_router_output(4, ""))
    assert decide(config(sglang.base_url), history=HISTORY) == ("finish", "")
    [req] = sglang.requests
    regex = req.body["sampling_params"]["regex"]
    assert regex == action_grammar().regex("select+reformat") and "<nexa_4>" in regex
    assert "Step: [search] Find the area of Texas\nOutput: Texas: Texas is a state" in req.body["text"]
    assert req.body["text"].endswith("<|im_end|>\n<|im_start|>assistant\n") and req.regex_matched


def test_a_finish_step_drops_its_argument_and_a_sub_task_is_unescaped(sglang):
    sglang.reset(text=format_router_output(4, "all done"))
    assert decide(config(sglang.base_url), history=HISTORY) == ("finish", "")
    subtask = "print('(268596 - 71298) / 100')\n<3 \\o/"
    sglang.reset(text=format_router_output(0, f" {subtask} "))
    assert decide(config(sglang.base_url), history=HISTORY) == ("code", subtask)
    assert sglang.requests[0].regex_matched


def test_settings_shape_the_request(sglang, monkeypatch):
    monkeypatch.setenv("HUSKY_ACTION_URL", sglang.base_url)
    monkeypatch.setenv("HUSKY_ACTION_KEY", "action-secret")
    sglang.reset(text=format_router_output(1, "Solve 2x + 3 = 7"))
    cfg = config("env:HUSKY_ACTION_URL", api_key="env:HUSKY_ACTION_KEY", max_subtask_tokens=16,
                 prompt_template="phi3")
    assert decide(cfg, task="Solve 2x + 3 = 7") == ("math", "Solve 2x + 3 = 7")
    [req] = sglang.requests
    assert req.headers["Authorization"] == "Bearer action-secret"
    assert req.body["sampling_params"]["max_new_tokens"] == FRAME + 16 + 1
    assert req.body["text"] == phi3_prompt([{"role": "system", "content": ACTION_SYSTEM_PROMPT},
                                            {"role": "user", "content": "Task: Solve 2x + 3 = 7"}])


def test_a_cut_off_sub_task_keeps_its_tool_and_what_was_written(sglang):
    sglang.reset(text="<nexa_0>('Compute (268596 - 71298) \\x3c", finish_reason={"type": "length", "length": 71})
    assert decide(config(sglang.base_url), history=HISTORY) == ("code", "Compute (268596 - 71298) <")
    sglang.reset(text="<nexa_", finish_reason={"type": "length", "length": 71})
    assert "did not answer a step" in failure(config(sglang.base_url), HISTORY)


def test_check_ready_names_the_served_model(sglang):
    async def main(url: str) -> str:
        husky = Husky("husky", AgentConfig(action=config(url)))
        await husky.start()  # not fatal when the server is down
        try:
            return await husky.check_ready()
        finally:
            await husky.aclose()

    assert asyncio.run(main(sglang.base_url)) == f"ok ({MODEL_PATH})"
    down = f"http://127.0.0.1:{free_port()}"
    assert asyncio.run(main(down)).startswith(f"unavailable (SGLang action generator at {down} is unreachable")


def test_the_engine_comes_from_the_config(sglang):
    assert isinstance(build_action_generator(config(sglang.base_url)), SGLangActionGenerator)
    assert ActionGeneratorConfig().engine == "embedded"  # the default is unchanged
    assert isinstance(Husky("h", AgentConfig(action=config(sglang.base_url))).action, SGLangActionGenerator)


# ------------------------------------------------------------------------------ failures
def test_an_http_error_is_an_action_error(sglang):
    sglang.reset(status=500, error="CUDA out of memory")
    assert failure(config(sglang.base_url)) == (
        f"SGLang action generator at {sglang.base_url} answered HTTP 500: CUDA out of memory")


def test_a_server_that_is_down_is_an_action_error():
    url = f"http://127.0.0.1:{free_port()}"
    assert failure(config(url)).startswith(f"SGLang action generator at {url} is unreachable")


def test_a_slow_server_times_out(sglang):
    sglang.reset(delay=3.0, text=format_router_output(2, "x"))
    message = failure(config(sglang.base_url, timeout=0.3))
    assert message == f"SGLang action generator at {sglang.base_url} did not answer within 0.3s"


def test_an_aborted_request_is_an_action_error(sglang):
    sglang.reset(text="", finish_reason={"type": "abort", "message": "grammar compilation failed"})
    assert failure(config(sglang.base_url)).endswith("aborted the request: grammar compilation failed")


@pytest.mark.parametrize("text", ["Sure! Let me search for that.", "<nexa_9>('x')<nexa_end>", "<nexa_2>('x')", "",
                                  "<nexa_4>('')<nexa_end>"])
def test_an_answer_that_is_not_a_step_is_an_action_error(sglang, text):
    sglang.reset(text=text)
    assert "did not answer a step" in failure(config(sglang.base_url))  # the first decision: finish is refused too
    assert sglang.requests[0].regex_matched is False, "a real constrained server could not have said this"


def test_a_generator_must_be_started():
    generator = SGLangActionGenerator(config("http://127.0.0.1:1"))
    with pytest.raises(ActionError, match="before start"):
        asyncio.run(generator.decide(TASK, []))


# ------------------------------------------------------------------------------ config
def graph_text(action: str) -> str:
    return ("nodes:\n  - {name: general, backend: {model: openai/x, api_base: 'http://127.0.0.1:9/v1'}}\n"
            f"agents:\n  husky:\n    action: {action}\n")


@pytest.mark.parametrize("action, expected", [
    ("{engine: sglang}", "agents.husky.action.base_url: engine 'sglang' needs base_url (the SGLang server)"),
    ("{engine: sglang, base_url: env:OCTOGATE_TEST_UNSET_ACTION}",
     "agents.husky.action.base_url: environment variable OCTOGATE_TEST_UNSET_ACTION is not set"),
    ("{engine: sglang, base_url: 'http://a:30000', path: agents/trained/husky-action}",
     "agents.husky.action.path: path is for engine 'embedded'"),
    ("{engine: embedded, base_url: 'http://a:30000'}", "agents.husky.action.base_url: base_url is for engine 'sglang'"),
    ("{engine: vllm, base_url: 'http://a:30000'}", "agents.husky.action.engine"),
])
def test_config_errors_name_the_key(tmp_path, action, expected):
    path = tmp_path / "graph.yaml"
    path.write_text(graph_text(action))
    with pytest.raises(ConfigError) as err:
        load_graph(path)
    assert expected in str(err.value)
    result = subprocess.run([sys.executable, "-m", "octogate.gateway.cli", "check-config", str(path)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and expected in result.stderr.replace("\n", " ")
    assert "Traceback" not in result.stderr


def test_a_valid_sglang_action_config_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("HUSKY_ACTION_URL", "http://husky-action:30000")
    path = tmp_path / "graph.yaml"
    path.write_text(graph_text("{engine: sglang, base_url: env:HUSKY_ACTION_URL, api_key: 'env:HUSKY_ACTION_KEY?', "
                               "timeout: 5}"))
    action = load_graph(path).agents["husky"].action
    assert (action.engine, action.base_url, action.prompt_template, action.timeout) == (
        "sglang", "env:HUSKY_ACTION_URL", "chatml", 5.0)


# ------------------------------------------------------------------------------ through the gateway
@pytest.fixture(scope="module")
def gw(server, upstream, gateway_factory):
    def node(name: str) -> dict:
        return {"name": name, "backend": {"model": "openai/echo", "api_base": upstream.base_url, "api_key": "k",
                                          "timeout": 5}}

    down = f"http://127.0.0.1:{free_port()}"
    husky = {"experts": {"code": "general", "math": "general", "search": "general", "commonsense": "general"},
             "max_steps": 3, "expert_max_tokens": 64}
    graph = {
        "nodes": [node("general")],
        "agents": {
            "husky": {**husky, "action": {"engine": "sglang", "base_url": server.base_url, "timeout": 5}},
            "husky-down": {**husky, "action": {"engine": "sglang", "base_url": down, "timeout": 5}},
        },
    }
    return gateway_factory(graph)


def test_a_husky_request_is_decided_by_sglang(gw, sglang, upstream):
    task = "What is the capital of Kenya? (sglang run 1)"
    sglang.reset(text=format_router_output(2, "capital of Kenya"), then=[format_router_output(4, "")])
    r = gw.client().chat.completions.create(model="husky", messages=[{"role": "user", "content": task}])
    choice = r.choices[0]
    reasoning = choice.message.reasoning_content
    assert reasoning.startswith("Step: [search] capital of Kenya\nOutput: ")
    assert "Kenya: Kenya is a country in Africa. Its capital is Nairobi" in reasoning  # the real local search
    assert reasoning.endswith("Step: [finish]")
    assert choice.finish_reason == "stop" and choice.message.content.startswith(f"echo: Task: {task}")
    first, second = sglang.requests
    assert "<nexa_4>" not in first.body["sampling_params"]["regex"] and first.regex_matched
    assert "<nexa_4>" in second.body["sampling_params"]["regex"] and second.regex_matched
    assert second.body["text"] == chatml_prompt([
        {"role": "system", "content": ACTION_SYSTEM_PROMPT},
        {"role": "user", "content": action_query(task, [Step("search", "capital of Kenya", reasoning.split(
            "\nOutput: ", 1)[1].rsplit("\nStep: [finish]", 1)[0])])}])
    expert = [q for q in upstream.state.requests if task in str(q.body) and "Sub-task: capital of Kenya" in str(q.body)]
    assert expert, "the search expert was asked with the sub-task SGLang wrote"


def test_a_streamed_husky_request_is_decided_by_sglang(gw, sglang):
    sglang.reset(text=format_router_output(0, "Compute 14 * 3"), then=[format_router_output(4, "")])
    stream = gw.client().chat.completions.create(
        model="husky", stream=True,
        messages=[{"role": "user", "content": "Ava buys 14 pencils at $3 each. How much does she pay? (stream)"}])
    reasoning, content, finish = "", "", None
    for chunk in stream:
        delta = chunk.choices[0].delta
        reasoning += getattr(delta, "reasoning_content", None) or ""
        content += delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    assert reasoning.startswith("Step: [code] Compute 14 * 3\nOutput: ")
    assert reasoning.rstrip("\n").endswith("Step: [finish]") and content.startswith("echo: Task: Ava buys")
    assert finish == "stop" and len(sglang.requests) == 2


@pytest.mark.parametrize("script", [dict(text="Sure! Let me look that up."), dict(status=503, error="overloaded"),
                                    dict(text="", finish_reason={"type": "abort", "message": "out of memory"})])
def test_an_sglang_failure_still_answers_200(gw, sglang, script):
    sglang.reset(**script)
    r = gw.client().chat.completions.create(model="husky", messages=[{"role": "user", "content": "Capital of Peru?"}])
    choice = r.choices[0]
    assert choice.message.reasoning_content.startswith(
        f"Step: [finish]\nOutput: Error: SGLang action generator at {sglang.base_url} ")
    assert choice.finish_reason == "stop" and choice.message.content.startswith("echo: Task: Capital of Peru?")


def test_a_server_that_is_down_still_answers_and_readyz_says_degraded(gw, sglang):
    r = gw.client().chat.completions.create(model="husky-down",
                                            messages=[{"role": "user", "content": "Capital of Chile?"}])
    choice = r.choices[0]
    assert re.match(r"Step: \[finish\]\nOutput: Error: SGLang action generator at http://127\.0\.0\.1:\d+ is unreachable",
                    choice.message.reasoning_content)
    assert choice.message.content.startswith("echo: Task: Capital of Chile?")
    ready = httpx.get(f"{gw.url}/readyz", timeout=30)
    body = ready.json()
    assert ready.status_code == 200 and body["status"] == "degraded"
    assert body["agents"]["husky"] == f"ok ({MODEL_PATH})"
    assert body["agents"]["husky-down"].startswith("unavailable (SGLang action generator at")
    assert "agent husky-down: action generator unavailable" in gw.output()


# ------------------------------------------------------------------------------ the model SGLang would serve
EXPORT_CASES = [  # held-out decisions (data/agent/actions/heldout.jsonl); on the first, '<' out-scores
    # the tool rows unscaled, so a constrained decoder would spell "<nexa_" and pick the digit as text
    ("Grace has 30 plants, gives away 11 and then buys 11 more. How many plants does Grace have now?", []),
    ("Where was the person who shared the Nobel Prize in Physics in 1954 with Max Born born?", []),
    ("What is 50% of 140?", [Step("code", "Calculate 50 / 100 * 140", "70")]),
]


def test_the_export_serves_the_embedded_engines_choices(tmp_path):
    """`octogate agent export` writes one GGUF (the LoRA merged, <nexa_0>..<nexa_4> in the vocabulary);
    loaded in llama.cpp, its tool-token logits are 1.5 times the embedded engine's scores, and greedy
    decoding under the protocol grammar, as a regex-constrained server decodes, starts with the
    embedded engine's tool."""
    import llama_cpp
    import numpy as np

    out = tmp_path / "husky-action.gguf"
    done = subprocess.run([sys.executable, "-m", "octogate.gateway.cli", "agent", "export", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "<nexa_0> 49152" in done.stdout.replace("\n", " ")
    generator = ActionGenerator(ActionGeneratorConfig())
    generator._load()
    llm = llama_cpp.Llama(str(out), n_ctx=512, n_threads=2, verbose=False)
    try:
        assert llm.n_vocab() == 49152 + 5
        for t in range(5):
            assert llm.tokenize(functional_token(t).encode(), add_bos=False, special=False) == [49152 + t]
            assert llm.detokenize([49152 + t]) == functional_token(t).encode()
        [lt] = llm.tokenize(b"<", add_bos=False, special=False)  # the ordinary token "<nexa_" can start with
        for task, history in EXPORT_CASES:
            scores = generator.scores(task, history)
            offered = [t for t in TOOLS if history or t != "finish"]
            chosen = max(offered, key=scores.get)
            ids = llm.tokenize((ACTION_PREFIX + action_query(task, history) + ACTION_SUFFIX).encode(),
                               add_bos=False, special=True)
            llm.reset()
            llm.eval(ids)
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()
            np.testing.assert_allclose(logits[49152:], 1.5 * np.array([scores[t] for t in TOOLS]), atol=0.15)
            assert max(logits[49152 + TOOLS.index(t)] for t in offered) > logits[lt]
            grammar = (action_grammar() if history else first_step_grammar()).gbnf("select+reformat")
            answer = llm.create_completion(ids, max_tokens=3, temperature=0.0, top_k=1,
                                           grammar=llama_cpp.LlamaGrammar.from_string(grammar, verbose=False))
            assert answer["choices"][0]["text"].startswith(functional_token(TOOLS.index(chosen))), (task, scores)
    finally:
        llm.close()
        generator.selector.close()
