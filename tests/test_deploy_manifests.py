"""compose.yaml, the Kubernetes manifests, the Dockerfile and the Grafana dashboard agree with the
code: names, ports, probes, env var names, the shutdown grace and the metric families."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from botrelay.cli import build_parser
from botrelay.shared import topology
from botrelay.shared.metrics import IngressMetrics, WorkerMetrics
from botrelay.shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = Settings()
# A worker's whole stop fits in one BOTRELAY_SHUTDOWN_GRACE; the orchestrator adds this to close.
CLOSE_MARGIN = 5
ENV_NAMES = set(DEFAULTS.env_names().values())
_INTERPOLATION = re.compile(r"\$\{([A-Z_]+)(?::?-([^}]*)|(:\?[^}]*))?\}")


def interpolate(value: str) -> str:
    """What compose makes of ``${VAR:-default}`` with nothing set: the default; a required
    ``${VAR:?message}`` stands for a value the operator sets (here a plain word)."""
    return _INTERPOLATION.sub(lambda m: "required" if m.group(3) else m.group(2) or "", value)


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", duration)
    assert match, duration
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[match.group(2)]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    docs = [doc for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]
    by_key = {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}
    assert len(by_key) == len(docs), "two manifests with one kind and name"
    return by_key


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    return {k: interpolate(str(v)) for k, v in (service.get("environment") or {}).items()}


def settings_from(env: dict[str, str]) -> Settings:
    return Settings.from_env(env)


# --- compose ----------------------------------------------------------------------------------

def test_compose_has_every_service_with_healthcheck_and_restart(compose):
    services = compose["services"]
    assert set(services) == {"rabbitmq", "redis", "ingress", "worker", "fake-cometchat"}
    assert re.match(r"rabbitmq:4[.\d]*-management", services["rabbitmq"]["image"])
    assert "15672:15672" in services["rabbitmq"]["ports"]
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert service.get("restart") in {"unless-stopped", "always", "on-failure"}, name
    assert services["worker"]["deploy"]["replicas"] == 3
    assert services["fake-cometchat"]["profiles"] == ["fake"]
    for name in ("ingress", "worker"):
        depends = services[name]["depends_on"]
        assert {k: v["condition"] for k, v in depends.items()} == {
            "rabbitmq": "service_healthy", "redis": "service_healthy"}


def test_compose_env_names_and_values_are_settings(compose):
    for name in ("ingress", "worker"):
        env = compose_env(compose["services"][name])
        assert set(env) <= ENV_NAMES, set(env) - ENV_NAMES
        settings = settings_from(env)  # every value parses
        assert settings.redis_url and settings.amqp_url.endswith("@rabbitmq:5672/")
        assert settings.prefix == DEFAULTS.prefix


def test_compose_ports_commands_and_probes_match_the_code(compose):
    parser = build_parser()
    ingress, worker = compose["services"]["ingress"], compose["services"]["worker"]
    args = parser.parse_args([interpolate(a) for a in ingress["command"]])
    port = settings_from(compose_env(ingress)).replace(port=args.port).port
    assert args.command == "ingress" and port == DEFAULTS.port
    assert f"{port}:{port}" in ingress["ports"]
    assert f"127.0.0.1:{port}/readyz" in " ".join(ingress["healthcheck"]["test"])

    args = parser.parse_args([interpolate(a) for a in worker["command"]])
    assert args.command == "worker" and args.app == "examples.echo_bot:bot"
    metrics_port = settings_from(compose_env(worker)).metrics_port
    assert args.metrics_port == metrics_port == DEFAULTS.metrics_port
    assert [str(metrics_port)] == [str(p) for p in worker["expose"]]
    assert f"127.0.0.1:{metrics_port}/readyz" in " ".join(worker["healthcheck"]["test"])

    fake = compose["services"]["fake-cometchat"]
    assert parser.parse_args(fake["command"]).command == "fake-cometchat"


def test_compose_stop_grace_covers_the_shutdown_grace(compose):
    for name in ("ingress", "worker"):
        service = compose["services"][name]
        grace = settings_from(compose_env(service)).shutdown_grace
        assert grace == DEFAULTS.shutdown_grace
        stop = seconds(service["stop_grace_period"])
        # Derived from the grace: the whole stop fits in it, plus 5 s to close connections.
        assert stop == grace + CLOSE_MARGIN, (name, grace, stop)


# --- Kubernetes -------------------------------------------------------------------------------

def container(doc: dict[str, Any]) -> dict[str, Any]:
    containers = doc["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


def pod_env(k8s: dict, doc: dict[str, Any]) -> dict[str, str]:
    """The env vars a pod gets: envFrom ConfigMaps and Secrets, then env."""
    env: dict[str, str] = {}
    for source in container(doc).get("envFrom", []):
        if "configMapRef" in source:
            env.update(k8s["ConfigMap", source["configMapRef"]["name"]]["data"])
        else:
            env.update(k8s["Secret", source["secretRef"]["name"]]["stringData"])
    env.update({e["name"]: e["value"] for e in container(doc).get("env", [])})
    return {k: str(v) for k, v in env.items()}


def named_port(doc: dict[str, Any], port: str | int) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container(doc)["ports"] if p["name"] == port)


@pytest.mark.parametrize(("name", "command", "port_field"), [
    ("botrelay-ingress", "ingress", "port"),
    ("botrelay-worker", "worker", "metrics_port"),
])
def test_deployments_match_the_code(k8s, name, command, port_field):
    doc = k8s["Deployment", name]
    env = pod_env(k8s, doc)
    assert set(env) <= ENV_NAMES, set(env) - ENV_NAMES
    settings = settings_from(env)
    args = build_parser().parse_args(container(doc)["args"])
    assert args.command == command
    port = getattr(settings.replace(**{port_field: getattr(args, port_field, None)}), port_field)
    assert port == getattr(DEFAULTS, port_field)
    ports = [p["containerPort"] for p in container(doc)["ports"]]
    assert ports[0] == port
    if command == "ingress":  # its metrics are served apart from the public port
        metrics = settings.replace(metrics_port=args.metrics_port).metrics_port
        assert ports == [port, metrics]
        annotations = doc["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(metrics)
    else:
        assert ports == [port]
    probes = {kind: container(doc)[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe")}
    if "startupProbe" in container(doc):
        probes["startupProbe"] = container(doc)["startupProbe"]["httpGet"]
        assert probes["startupProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert {named_port(doc, p["port"]) for p in probes.values()} == {port}
    assert doc["spec"]["selector"]["matchLabels"].items() <= (
        doc["spec"]["template"]["metadata"]["labels"].items())
    # Kubernetes waits preStop + the shutdown grace before SIGKILL, with a margin to close.
    pre_stop = container(doc).get("lifecycle", {}).get("preStop", {}).get("exec", {})
    sleep = float(pre_stop["command"][1]) if pre_stop else 0.0
    period = doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert settings.shutdown_grace == DEFAULTS.shutdown_grace
    assert period == sleep + settings.shutdown_grace + CLOSE_MARGIN
    assert doc["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_services_select_the_deployments_and_their_ports(k8s):
    for (kind, name), doc in k8s.items():
        if kind != "Service":
            continue
        selector = doc["spec"]["selector"]
        targets = [d for (k, _), d in k8s.items() if k == "Deployment"
                   and selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(targets) == 1, name
        names = {p["name"] for p in container(targets[0])["ports"]}
        assert all(p["targetPort"] in names for p in doc["spec"]["ports"]), name


def test_keda_scales_workers_on_the_inbound_queues(k8s):
    scaled = k8s["ScaledObject", "botrelay-worker"]
    assert ("Deployment", scaled["spec"]["scaleTargetRef"]["name"]) in k8s
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert ("TriggerAuthentication", trigger["authenticationRef"]["name"]) in k8s
    meta = trigger["metadata"]
    assert meta["mode"] == "QueueLength" and int(meta["value"]) > 0
    prefix = k8s["ConfigMap", "botrelay-config"]["data"]["BOTRELAY_PREFIX"]
    pattern = re.compile(meta["queueName"])
    inbound = [topology.inbound_queue(prefix)] + [
        topology.partition_queue(prefix, n) for n in range(DEFAULTS.partitions)]
    assert all(pattern.search(q) for q in inbound)
    settings = Settings(prefix=prefix)
    side = [topology.dead_queue(prefix)] + [
        topology.retry_queue(prefix, d) for d in settings.retry_delays]
    assert not any(pattern.search(q) for q in side)
    assert meta.get("useRegex") == "true" and meta.get("operation") == "sum"
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    assert scaled["spec"]["maxReplicaCount"] <= DEFAULTS.partitions


# --- image and dashboard ----------------------------------------------------------------------

def test_dockerfile_runs_botrelay_and_exposes_the_ports():
    text = (ROOT / "Dockerfile").read_text()
    exposed = {int(p) for line in text.splitlines() if line.startswith("EXPOSE")
               for p in shlex.split(line)[1:]}
    assert exposed == {DEFAULTS.port, DEFAULTS.metrics_port}
    assert 'ENTRYPOINT ["botrelay"]' in text
    assert re.search(r"^USER \d+", text, re.M)


def test_the_image_carries_the_bot_that_compose_and_the_manifests_run():
    """examples/ is not installed with botrelay: the image copies BOT_DIR into /app instead."""
    text = (ROOT / "Dockerfile").read_text()
    [default_dir] = re.findall(r"^ARG BOT_DIR=(\S+)$", text, re.M)
    assert re.search(r"^COPY \$\{BOT_DIR\} /app/\$\{BOT_DIR\}$", text, re.M)
    assert re.search(r"^WORKDIR /app$", text, re.M)
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert compose["x-botrelay"]["build"]["args"]["BOT_DIR"] == f"${{BOT_DIR:-{default_dir}}}"
    worker_app = compose["services"]["worker"]["command"][2]
    [module] = re.findall(r"^\$\{BOTRELAY_APP:-([\w.]+):\w+\}$", worker_app)
    assert module.split(".")[0] == default_dir
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file()


def test_grafana_dashboard_shows_every_metric_family_and_only_those():
    dashboard = orjson.loads((ROOT / "deploy" / "grafana" / "botrelay-dashboard.json")
                             .read_bytes())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    wanted: set[str] = set()
    for registry in (IngressMetrics().registry, WorkerMetrics().registry):
        for family in registry.collect():
            suffix = {"counter": "_total", "histogram": "_bucket"}.get(family.type, "")
            wanted.add(family.name + suffix)
    used = set(re.findall(r"\bbotrelay_[a-z_]+", exprs))
    assert wanted == used, (wanted - used, used - wanted)
