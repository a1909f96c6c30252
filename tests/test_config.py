"""Graph files: the shipped ones validate; each kind of mistake gets a readable error naming file and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from octogate.core.graph import ConfigError, load_graph

REPO = Path(__file__).resolve().parent.parent
CATEGORIES = ["physics", "chemistry", "biology", "computer_science", "math", "electrical_engineering", "history",
              "philosophy", "law", "politics", "culture", "economics", "geography", "psychology", "business",
              "health", "general"]


def check_config(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "octogate.gateway.cli", "check-config", str(path)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


# What a deployment of config/octopus-v4.yaml sets: each address it reads from the environment.
OCTOPUS_ENV = {"OCTOGATE_REDIS_URL": "redis://127.0.0.1:6379/0", "ROUTER_URL": "http://127.0.0.1:30000",
               **{f"{name}_API_BASE": "http://127.0.0.1:9/v1" for name in (
                   "LLAMA3", "PHYSICS", "BIOLOGY", "COMPUTER_SCIENCE", "MATH", "ELECTRICAL_ENGINEERING", "LAW",
                   "HEALTH", "GENERAL")}}


@pytest.fixture
def octopus_env(monkeypatch):
    for name, value in OCTOPUS_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("name", ["default.yaml", "octopus-v4.yaml"])
def test_shipped_graphs_have_the_17_octopus_categories(name, octopus_env):
    graph = load_graph(REPO / "config" / name)
    assert [n.name for n in graph.nodes] == CATEGORIES
    assert [n.token for n in graph.nodes] == list(range(17))
    assert all(n.persona and n.description for n in graph.nodes)


def test_default_graph_runs_everything_on_the_embedded_model():
    graph = load_graph(REPO / "config" / "default.yaml")
    assert {graph.backend_of(n).kind for n in graph.nodes} == {"embedded"}


def test_octopus_graph_reads_its_upstreams_from_the_environment(octopus_env):
    graph = load_graph(REPO / "config" / "octopus-v4.yaml")
    for node in graph.nodes:
        backend = graph.backend_of(node)
        assert backend.kind == "openai"
        assert backend.api_base.startswith("env:"), node.name
    assert "law-chat" in graph.backend_of(graph.nodes[8]).model
    assert "Llama-3-8B-Instruct" in graph.backend_of(graph.nodes[6]).model


def test_check_config_prints_the_nodes():
    result = check_config(REPO / "config" / "default.yaml")
    assert result.returncode == 0, result.stderr
    assert "17 nodes" in result.stdout and "<nexa_16>" in result.stdout


BAD = {
    "not yaml": ("nodes: [\n  - name: a\n    backend: {model: openai/x", "not valid YAML (line"),
    "not a mapping": ("- just\n- a list\n", "top level must be a mapping"),
    "no nodes": ("server: {}\n", "nodes: Field required"),
    "empty nodes": ("nodes: []\n", "nodes: List should have at least 1 item"),
    "unknown key": ("nodes:\n  - name: a\n    backend: {model: openai/x}\n    persnoa: hi\n", "nodes[0].persnoa: unknown key"),
    "model without provider": ("nodes:\n  - name: a\n    backend: {model: gpt4}\n", "nodes[0].backend.model: 'gpt4' is not provider/model"),
    "unknown backend ref": ("nodes:\n  - name: a\n    backend: gpu\n", "nodes[0].backend: unknown backend 'gpu'"),
    "duplicate names": ("nodes:\n  - {name: a, backend: {model: openai/x}}\n  - {name: a, backend: {model: openai/x}}\n",
                        "nodes[1].name: duplicate node name 'a'"),
    "duplicate tokens": ("nodes:\n  - {name: a, token: 3, backend: {model: openai/x}}\n"
                         "  - {name: b, token: 3, backend: {model: openai/x}}\n", "nodes[1].token: token 3 is already used"),
    "bad timeout": ("nodes:\n  - {name: a, backend: {model: openai/x, timeout: 0}}\n", "nodes[0].backend.timeout: Input should be greater than 0"),
    "bad node name": ("nodes:\n  - {name: 'a b', backend: {model: openai/x}}\n", "nodes[0].name: String should match pattern"),
    "params set model": ("nodes:\n  - {name: a, params: {model: y}, backend: {model: openai/x}}\n", "nodes[0].params: params may not set model"),
    "negative token": ("nodes:\n  - {name: a, token: -1, backend: {model: openai/x}}\n", "nodes[0].token: Input should be greater than or equal to 0"),
    "prior correction on sglang": (
        "router: {engine: sglang, base_url: 'http://r:30000', prior_correction: false}\n"
        "nodes:\n  - {name: a, token: 0, backend: {model: openai/x}}\n",
        "router.prior_correction: prior_correction is for engine 'embedded'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_gets_a_readable_error(tmp_path, case):
    text, expected = BAD[case]
    path = tmp_path / "graph.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_graph(path)
    message = str(err.value)
    assert message.startswith(f"{path}:"), message
    assert expected in message, message
    assert "Traceback" not in message and "pydantic" not in message


def test_check_config_exits_1_with_the_problem(tmp_path):
    path = tmp_path / "graph.yaml"
    path.write_text("nodes:\n  - name: a\n    backend: gpu\n")
    result = check_config(path)
    assert result.returncode == 1
    assert "nodes[0].backend: unknown backend 'gpu'" in result.stderr
    assert "Traceback" not in result.stderr
    missing = check_config(tmp_path / "absent.yaml")
    assert missing.returncode == 1 and "no such file" in missing.stderr


def test_serve_refuses_a_bad_config_before_starting(tmp_path):
    path = tmp_path / "graph.yaml"
    path.write_text("nodes: []\n")
    result = subprocess.run([sys.executable, "-m", "octogate.gateway.cli", "serve", "--config", str(path), "--port", "1"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "at least 1 item" in result.stderr


def test_serve_reads_the_config_named_by_OCTOGATE_CONFIG(tmp_path):
    import os

    path = tmp_path / "from-env.yaml"
    path.write_text("nodes:\n  - name: a\n    backend: nowhere\n")
    result = subprocess.run([sys.executable, "-m", "octogate.gateway.cli", "serve", "--port", "1"], cwd=REPO,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "OCTOGATE_CONFIG": str(path)})
    assert result.returncode == 1
    assert f"{path}: nodes[0].backend: unknown backend 'nowhere'" in result.stderr.replace("\n", "")


UNSET = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OCTOGATE_TEST_UNSET")}


@pytest.mark.parametrize("text, expected", [
    # an unset key would have turned authentication off without a word
    ("server: {api_keys: [env:OCTOGATE_TEST_UNSET_KEY]}\nnodes:\n  - {name: a, backend: {model: openai/x, api_base: 'http://h/v1'}}\n",
     "server.api_keys[0]: environment variable OCTOGATE_TEST_UNSET_KEY is not set"),
    # an unset address would have sent the node's traffic to OpenAI's public endpoint
    ("nodes:\n  - {name: a, backend: {model: openai/x, api_base: env:OCTOGATE_TEST_UNSET_BASE}}\n",
     "nodes[0].backend.api_base: environment variable OCTOGATE_TEST_UNSET_BASE is not set"),
    ("nodes:\n  - {name: a, backend: {model: openai/x, api_base: ['env:OCTOGATE_TEST_UNSET_BASE?']}}\n",
     "nodes[0].backend.api_base[0]: env:OCTOGATE_TEST_UNSET_BASE? cannot be optional here"),
    ("server: {api_keys: [{name: team-a, key: env:OCTOGATE_TEST_UNSET_TEAM}]}\n"
     "nodes:\n  - {name: a, backend: {model: openai/x, api_base: 'http://h/v1'}}\n",
     "server.api_keys[0].key: environment variable OCTOGATE_TEST_UNSET_TEAM is not set"),
])
def test_an_unset_environment_variable_is_a_config_error(tmp_path, text, expected):
    path = tmp_path / "graph.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_graph(path)
    assert expected in str(err.value)
    result = subprocess.run([sys.executable, "-m", "octogate.gateway.cli", "serve", "--config", str(path), "--port", "1"],
                            cwd=REPO, capture_output=True, text=True, timeout=60, env=UNSET)
    assert result.returncode == 1 and expected in result.stderr.replace("\n", "")


def test_an_optional_reference_may_be_unset(tmp_path):
    path = tmp_path / "graph.yaml"
    path.write_text("nodes:\n  - {name: a, backend: {model: openai/x, api_base: 'http://h/v1', "
                    "api_key: 'env:OCTOGATE_TEST_UNSET_KEY?'}}\n")
    assert load_graph(path).nodes[0].name == "a"


def test_check_config_reports_every_problem_at_once(tmp_path):
    path = tmp_path / "graph.yaml"
    path.write_text("nodes:\n"
                    "  - {name: a, token: 3, backend: {model: gpt4}}\n"
                    "  - {name: b, token: 3, backend: {model: openai/x, timeout: 0}}\n"
                    "  - {name: a, backend: nowhere, fallbacks: [zz]}\n"
                    "  - {name: c, backend: {model: openai/x, api_base: env:OCTOGATE_TEST_UNSET_BASE}}\n")
    result = check_config(path)
    assert result.returncode == 1
    err = result.stderr.replace("\n", " ")
    for problem in ("nodes[0].backend.model: 'gpt4' is not provider/model", "nodes[1].backend.timeout",
                    "nodes[1].token: token 3 is already used", "nodes[2].name: duplicate node name 'a'",
                    "nodes[2].backend: unknown backend 'nowhere'", "OCTOGATE_TEST_UNSET_BASE is not set"):
        assert problem in err, problem


def test_fallbacks_name_known_nodes(tmp_path):
    path = tmp_path / "graph.yaml"
    path.write_text("nodes:\n  - {name: a, fallbacks: [a, zz], backend: {model: openai/x, api_base: 'http://h/v1'}}\n")
    with pytest.raises(ConfigError) as err:
        load_graph(path)
    assert "nodes[0].fallbacks[0]: a node cannot be its own fallback" in str(err.value)
    assert "nodes[0].fallbacks[1]: unknown node 'zz'" in str(err.value)


def test_a_fallback_chain_follows_the_fallbacks_fallbacks(tmp_path):
    path = tmp_path / "graph.yaml"
    path.write_text("nodes:\n"
                    "  - {name: a, fallbacks: [b], backend: {model: openai/x, api_base: 'http://h/v1'}}\n"
                    "  - {name: b, fallbacks: [c, a], backend: {model: openai/x, api_base: 'http://h/v1'}}\n"
                    "  - {name: c, backend: {model: openai/x, api_base: 'http://h/v1'}}\n")
    graph = load_graph(path)
    assert graph.fallback_chain("a") == ["b", "c"]
    assert graph.fallback_chain("b") == ["c", "a"]
    assert graph.fallback_chain("c") == []
