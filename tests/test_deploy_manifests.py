"""The Kubernetes manifests under deploy/: every overlay renders with ``kubectl kustomize``, every
rendered object validates strictly against the Kubernetes schemas (``kubernetes-validate``; the
ServiceMonitor, a Prometheus Operator CRD those schemas do not cover, against a small schema of
ours), the rendered graph passes ``octogate check-config``, every Service a graph points at exists
in the same overlay with a workload behind it, and the gateway runs the image the Dockerfile
builds (name, port, user, health endpoints, shutdown timing)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
OCTOGATE = Path(sys.executable).parent / "octogate"  # the console script of this environment
OVERLAYS = ("embedded", "octopus-v4")
COMPONENTS = ("observability", "hpa-requests-in-flight", "managed-redis")
NAMESPACE = "octogate"
# The oldest Kubernetes minor still commonly run, and the newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
ROUTER_MODEL = "NexaAI/Octopus-v4"

# monitoring.coreos.com/v1 ServiceMonitor: the fields we use, no others (kubernetes-validate has
# schemas for the built-in kinds only). After the operator's CRD, trimmed.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object", "required": ["name"], "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                           "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                           "annotations": {"type": "object", "additionalProperties": {"type": "string"}}},
        },
        "spec": {
            "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "additionalProperties": False, "properties": {
                    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}},
                "namespaceSelector": {"type": "object"},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                   "interval": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
                                   "scrapeTimeout": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
                                   "scheme": {"enum": ["http", "https"]}}}},
            },
        },
    },
}


def kustomize(path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render deploy/ (kustomize is built into it)"
    done = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {path} failed:\n{done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """Each overlay, and the embedded overlay with each optional component and with all of them."""
    out = {name: kustomize(DEPLOY / "overlays" / name) for name in OVERLAYS}
    for combo in [(c,) for c in COMPONENTS] + [COMPONENTS]:
        d = tmp_path_factory.mktemp("kustomization")
        rel = lambda p: os.path.relpath(p, d)  # kustomize refuses absolute paths
        # As the overlay's commented `components:` would: the namespace applies to what they add.
        (d / "kustomization.yaml").write_text(yaml.safe_dump({
            "namespace": NAMESPACE,
            "resources": [rel(DEPLOY / "overlays" / "embedded")],
            "components": [rel(DEPLOY / "components" / c) for c in combo]}))
        out["embedded+" + "+".join(combo)] = kustomize(d)
    return out


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def gateway_container(docs: list[dict]) -> dict:
    return one(docs, "Deployment", "octogate-gateway")["spec"]["template"]["spec"]["containers"][0]


def literal_env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def pod_env(container: dict) -> dict[str, str]:
    """The container's environment once its Secrets exist: literal values, and a stand-in for each
    value taken from a Secret (the docs tell you to create them)."""
    secrets = {e["name"]: f"secret-{e['name'].lower()}" for e in container.get("env", [])
               if "secretKeyRef" in e.get("valueFrom", {})}
    return {**secrets, **literal_env(container)}


def graph_files(docs: list[dict]) -> dict[str, str]:
    """The gateway's graph volume as the pod sees it: {path under the mount: content}."""
    deployment = one(docs, "Deployment", "octogate-gateway")
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "graph")
    configmap = one(docs, "ConfigMap", volume["configMap"]["name"])
    return {item["path"]: configmap["data"][item["key"]] for item in volume["configMap"]["items"]}


def graph_of(docs: list[dict]) -> dict:
    return yaml.safe_load(graph_files(docs)["graph.yaml"])


def resolve(value: str | None, env: dict[str, str]) -> str | None:
    if value is not None and value.startswith("env:"):
        return env.get(value[4:])
    return value


def workload_behind(docs: list[dict], service: dict) -> tuple[dict, dict]:
    """The Deployment or StatefulSet whose pods a Service selects, and the container serving it."""
    selector = service["spec"]["selector"]
    matches = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")
               and selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
    assert len(matches) == 1, f"Service {service['metadata']['name']} selects {len(matches)} workloads"
    return matches[0], matches[0]["spec"]["template"]["spec"]["containers"][0]


def service_for_url(docs: list[dict], url: str) -> tuple[dict, dict]:
    """The Service a URL inside the cluster names (name, name.namespace or name.namespace.svc...)
    and the container behind it; the URL's port must be a port of the Service whose target the
    container exposes."""
    parts = urlsplit(url)
    labels = (parts.hostname or "").split(".")
    name = labels[0]
    if len(labels) > 1:
        assert labels[1] == NAMESPACE, f"{url}: namespace {labels[1]}, not the overlay's {NAMESPACE}"
    services = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == name]
    assert services, f"{url} points at Service {name!r}, which this overlay does not define"
    service = services[0]
    port = parts.port or (443 if parts.scheme in ("https", "rediss") else 80)
    ports = {p["port"]: p for p in service["spec"]["ports"]}
    assert port in ports, f"{url}: Service {name} has no port {port} (ports {sorted(ports)})"
    workload, container = workload_behind(docs, service)
    target = ports[port].get("targetPort", port)
    exposed = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert target in exposed or target in exposed.values(), \
        f"{url}: targetPort {target} is not a port of {workload['metadata']['name']}"
    return service, container


# --------------------------------------------------------------------------------- rendering
def test_every_overlay_and_component_renders(rendered):
    for name, docs in rendered.items():
        kinds = {d["kind"] for d in docs}
        assert {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds, name
        assert all(d["metadata"].get("namespace") == NAMESPACE for d in docs), name


def test_every_object_validates_strictly(rendered):
    checked: dict[str, int] = {}
    for variant, docs in rendered.items():
        for doc in docs:
            where = f"{variant}: {doc['kind']} {doc['metadata']['name']}"
            if doc["kind"] == "ServiceMonitor":
                try:
                    jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
                except jsonschema.ValidationError as exc:
                    pytest.fail(f"{where}: {exc.message}")
            else:
                for version in K8S_VERSIONS:
                    try:
                        kubernetes_validate.validate(doc, version, strict=True)
                    except kubernetes_validate.ValidationError as exc:
                        pytest.fail(f"{where} (Kubernetes {version}): {exc}")
            checked[doc["kind"]] = checked.get(doc["kind"], 0) + 1
    assert checked["ServiceMonitor"] >= 2 and checked["StatefulSet"] >= 1 and checked["Deployment"] >= 11


def test_the_servicemonitor_schema_refuses_what_it_should():
    good = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "x"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "endpoints": [{"port": "http", "interval": "15s"}]}}
    jsonschema.validate(good, SERVICE_MONITOR_SCHEMA)
    for bad in ({**good, "spec": {**good["spec"], "endpoint": []}},
                {**good, "spec": {**good["spec"], "endpoints": [{"port": "http", "interval": "soon"}]}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, SERVICE_MONITOR_SCHEMA)


# --------------------------------------------------------------------------------- the graph
def test_the_graph_copies_match_config():
    """kustomize reads only files below a kustomization, so deploy/ holds copies of config/'s graphs."""
    base = DEPLOY / "base" / "graph"
    assert (base / "default.yaml").read_bytes() == (REPO / "config" / "default.yaml").read_bytes(), \
        "deploy/base/graph/default.yaml differs from config/default.yaml: cp config/default.yaml deploy/base/graph/"
    assert (base / "toolsets" / "assistant.json").read_bytes() == \
        (REPO / "config" / "toolsets" / "assistant.json").read_bytes(), "cp config/toolsets/assistant.json deploy/base/graph/toolsets/"
    # The cluster variant of octopus-v4: the same graph but for where its servers are.
    cluster = yaml.safe_load((DEPLOY / "overlays" / "octopus-v4" / "graph" / "octopus-v4.yaml").read_text())
    original = yaml.safe_load((REPO / "config" / "octopus-v4.yaml").read_text())
    for graph in (cluster, original):
        graph["router"].pop("base_url")
        for backend in graph["backends"].values():
            backend.pop("api_base")
    assert cluster == original


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_rendered_graph_passes_check_config(rendered, overlay, tmp_path):
    docs = rendered[overlay]
    for path, content in graph_files(docs).items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(content)
    env = {**os.environ, **pod_env(gateway_container(docs))}
    env.pop("OCTOGATE_CONFIG")
    env["COLUMNS"] = "400"  # rich wraps the table's title to the terminal's width otherwise
    done = subprocess.run([str(OCTOGATE), "check-config", str(tmp_path / "graph.yaml")], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "17 nodes" in done.stdout
    mount = next(m for m in gateway_container(docs)["volumeMounts"] if m["name"] == "graph")
    assert literal_env(gateway_container(docs))["OCTOGATE_CONFIG"] == f"{mount['mountPath']}/graph.yaml"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_the_graph_points_at_exists_in_the_overlay(rendered, overlay):
    docs = rendered[overlay]
    env = literal_env(gateway_container(docs))
    graph = graph_of(docs)
    urls = [env["OCTOGATE_REDIS_URL"]]
    for node in graph["nodes"]:
        backend = graph["backends"][node["backend"]] if isinstance(node["backend"], str) else node["backend"]
        if backend["model"].startswith("embedded/"):
            continue
        url = resolve(backend.get("api_base"), env)
        assert url, f"node {node['name']}: api_base {backend.get('api_base')} does not resolve in the Deployment"
        urls.append(url)
    if graph.get("router", {}).get("engine") == "sglang":
        urls.append(resolve(graph["router"]["base_url"], env))
    for url in urls:
        service_for_url(docs, url)
    if overlay == "octopus-v4":
        assert len(set(urls)) == 1 + 9 + 1  # Redis, 9 backends, the router


def test_each_backend_is_served_under_the_model_name_the_graph_asks_for(rendered):
    docs = rendered["octopus-v4"]
    graph = graph_of(docs)
    served = set()
    for name, backend in graph["backends"].items():
        _, container = service_for_url(docs, backend["api_base"])
        model = backend["model"].partition("/")[2]
        args = container.get("args", [])
        if container["image"].startswith("vllm/vllm-openai:"):
            assert args[args.index("--served-model-name") + 1] == model, name
            assert args[args.index("--model") + 1] == model, name
        else:  # LoRAX: the base model is loaded, the adapter is named per request as the model
            assert container["image"].startswith("ghcr.io/predibase/lorax:"), name
            assert args[args.index("--model-id") + 1] == "microsoft/phi-2" and model.startswith("STEM-AI-mtl/phi-2"), name
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1", name
        served.add(container["name"] + ":" + model)
    assert len(served) == 9


def test_the_router_runs_the_command_the_cli_prints(rendered, tmp_path):
    docs = rendered["octopus-v4"]
    (tmp_path / "graph.yaml").write_text(graph_files(docs)["graph.yaml"])
    done = subprocess.run([str(OCTOGATE), "router", "sglang-command", "--config", str(tmp_path / "graph.yaml"),
                           "--model-path", ROUTER_MODEL, "--host", "0.0.0.0"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **pod_env(gateway_container(docs))})
    assert done.returncode == 0, done.stdout + done.stderr
    printed = shlex.split(done.stdout.strip().splitlines()[-1])
    service, container = service_for_url(docs, graph_of(docs)["router"]["base_url"])
    command = container["command"]
    # The SGLang image has python3; the CLI prints the interpreter as `python`.
    assert command[0] in ("python", "python3") and printed[0] in ("python", "python3")
    assert command[1:] == printed[1:]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


# --------------------------------------------------------------------------------- the gateway
def dockerfile_runtime() -> dict[str, str]:
    """USER, EXPOSE, HEALTHCHECK, CMD and WORKDIR of the Dockerfile's last stage, and the tag its header builds."""
    text = (REPO / "Dockerfile").read_text()
    tag = re.search(r"docker build -t (\S+) \.", text)
    assert tag, "the Dockerfile's header no longer says `docker build -t NAME .`"
    runtime = re.split(r"(?m)^FROM ", text)[-1]
    joined = re.sub(r"\\\n", " ", runtime)
    found = {"tag": tag.group(1)}
    for instruction in ("USER", "EXPOSE", "HEALTHCHECK", "CMD", "WORKDIR"):
        lines = re.findall(rf"(?m)^{instruction} (.+)$", joined)
        assert lines, f"the runtime stage has no {instruction}"
        found[instruction] = lines[-1].strip()
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_runs_the_image_the_dockerfile_builds(rendered, overlay):
    docker = dockerfile_runtime()
    deployment = one(rendered[overlay], "Deployment", "octogate-gateway")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # Same name: the image is the Dockerfile's tag (an overlay may add a registry and a version).
    assert container["image"].rpartition(":")[0] == docker["tag"] == "octogate"
    # Same port: EXPOSE, the CMD's --port and the container port.
    port = int(docker["EXPOSE"])
    assert f"--port {port}" in " ".join(re.findall(r'"([^"]*)"', docker["CMD"]))
    assert "command" not in container and "args" not in container  # the image's CMD runs
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": port}
    # Same user: numeric, non-root.
    user, group = (int(x) for x in docker["USER"].split(":"))
    assert user != 0
    assert pod["securityContext"]["runAsUser"] == user and pod["securityContext"]["runAsGroup"] == group
    assert pod["securityContext"]["runAsNonRoot"] is True
    # Same health endpoints: the HEALTHCHECK's, and /readyz for readiness.
    assert "/healthz" in docker["HEALTHCHECK"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ("http", port)
    # Read-only root filesystem, with writable volumes where the app writes.
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {m["mountPath"] for m in container["volumeMounts"]
                if not m.get("readOnly") and "emptyDir" in volumes[m["name"]]}
    env = literal_env(container)
    assert "/tmp" in writable and env["XDG_CACHE_HOME"] in writable
    # Resources, keys from a Secret, spread over nodes.
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    keys = next(e for e in container["env"] if e["name"] == "OCTOGATE_API_KEYS")
    assert keys["valueFrom"]["secretKeyRef"]["name"] == "octogate-api-keys"
    spread = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    assert "kubernetes.io/hostname" in spread
    for c in pod["topologySpreadConstraints"]:
        assert c["labelSelector"]["matchLabels"].items() <= pod_labels(deployment).items()


def pod_labels(deployment: dict) -> dict:
    return deployment["spec"]["template"]["metadata"]["labels"]


def cli_source() -> str:
    """The source of the module behind the `octogate` console script, wherever the code lives."""
    entry = next(e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "octogate")
    spec = importlib.util.find_spec(entry.module)
    assert spec and spec.origin
    return Path(spec.origin).read_text()


def graceful_shutdown_seconds(files: dict[str, str], where: Path) -> float:
    """How long `octogate serve` lets requests in flight finish after SIGTERM, for this graph
    (``files``: the graph volume's contents, written under ``where``)."""
    argument = re.search(r"timeout_graceful_shutdown=([\w.]+)", cli_source())
    assert argument, "`octogate serve` no longer sets uvicorn's timeout_graceful_shutdown"
    if re.fullmatch(r"[0-9.]+", argument.group(1)):
        return float(argument.group(1))
    assert argument.group(1).endswith("server.shutdown_grace_seconds"), argument.group(0)
    from octogate.core.graph import load_graph  # the schema's default when the graph sets none

    for path, content in files.items():
        (where / path).parent.mkdir(parents=True, exist_ok=True)
        (where / path).write_text(content)
    return load_graph(where / "graph.yaml").server.shutdown_grace_seconds


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_grace_period_covers_prestop_and_the_graceful_shutdown(rendered, overlay, monkeypatch, tmp_path):
    docs = rendered[overlay]
    for name, value in pod_env(gateway_container(docs)).items():  # env: references resolve as in the pod
        monkeypatch.setenv(name, value)
    graceful = graceful_shutdown_seconds(graph_files(docs), tmp_path)
    pod = one(docs, "Deployment", "octogate-gateway")["spec"]["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # The pod leaves the endpoints during preStop, then drains for up to `graceful` seconds after SIGTERM.
    assert int(pre_stop[1]) + graceful + 5 <= pod["terminationGracePeriodSeconds"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_pdb_and_service_select_the_gateway(rendered, overlay):
    docs = rendered[overlay]
    deployment = one(docs, "Deployment", "octogate-gateway")
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    hpa = one(docs, "HorizontalPodAutoscaler", "octogate-gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "octogate-gateway"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"] == ["cpu"]
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = one(docs, "PodDisruptionBudget", "octogate-gateway")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels(deployment).items()
    assert pdb["spec"]["maxUnavailable"] == 1
    service = one(docs, "Service", "octogate")
    assert workload_behind(docs, service)[0] is deployment


def test_redis_is_a_statefulset_on_a_persistent_volume(rendered):
    docs = rendered["embedded"]
    redis = one(docs, "StatefulSet", "octogate-redis")
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    container = redis["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert "--appendonly" in container["args"]
    one(docs, "Service", redis["spec"]["serviceName"])


def test_components(rendered):
    managed = rendered["embedded+managed-redis"]
    assert not [d for d in managed if d["kind"] == "StatefulSet" or d["metadata"]["name"].startswith("octogate-redis")]
    url = next(e for e in gateway_container(managed)["env"] if e["name"] == "OCTOGATE_REDIS_URL")
    assert url == {"name": "OCTOGATE_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": "octogate-redis-url", "key": "url"}}}

    hpa = one(rendered["embedded+hpa-requests-in-flight"], "HorizontalPodAutoscaler", "octogate-gateway")
    pods = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods == ["octogate_requests_in_flight"]

    observed = rendered["embedded+observability"]
    monitor = one(observed, "ServiceMonitor", "octogate-gateway")
    service = one(observed, "Service", "octogate")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [p["name"] for p in service["spec"]["ports"]]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    env = literal_env(gateway_container(observed))
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://") and env["OTEL_SERVICE_NAME"] == "octogate"
    # The GPU overlay ships with observability on.
    assert [d for d in rendered["octopus-v4"] if d["kind"] == "ServiceMonitor"]
