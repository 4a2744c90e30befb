"""deploy/ proven offline with the real tools (issue 6).

- Prometheus: `promtool check rules` and `promtool test rules`; every alert has a firing and a
  quiet unit test, a severity, a service, a summary and a runbook anchor that exists in
  docs/operations.md; the PrometheusRule copy is in sync.
- Kubernetes: every overlay renders with `kubectl kustomize` and validates strictly
  (kubernetes-validate's bundled schemas; the prometheus-operator CRDs against the schemas in
  deploy/k8s/schemas); Deployments are hardened and wired (probes, limits, securityContext,
  grace periods consistent with gunicorn, PDB, HPA, Service, Ingress, PodMonitor); no literal
  secret anywhere.
- Grafana: valid, up-to-date JSON whose queries parse and use only known metrics.
- The image's entrypoint and gunicorn config, run for real (gunicorn in multiprocess mode).

A missing tool skips its tests with the reason; with CI=true it fails them instead.
Install the tools with `bash deploy/install-tools.sh`.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROM = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
DOCS = ROOT / "docs" / "operations.md"
SERVICES = ("catalog", "delivery", "referral", "payout", "risk")
OVERLAYS = ("dev", "prod")
# the oldest cluster docs/operations.md supports, and the newest kubernetes-validate knows
K8S_VERSIONS = ("1.29", "1.37")
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): K8S / "schemas" / "podmonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): K8S / "schemas" / "prometheusrule-monitoring-v1.json",
}
CI = os.environ.get("CI", "").lower() == "true"

# What each alert must watch (issue 6's list), by the metric its expression uses.
ALERTS = {
    "LinkshopServiceDown": "up",
    "LinkshopHighErrorRate": "linkshop_http_requests_total",
    "LinkshopDeliveryLatencyHigh": "linkshop_delivery_latency_seconds_bucket",
    "LinkshopOutboxBacklogGrowing": "linkshop_outbox_pending",
    "LinkshopDeadLetters": "rabbitmq_queue_messages",
    "LinkshopConsumerLag": "linkshop_event_lag_seconds_bucket",
    "LinkshopStockLow": "linkshop_stock_available",
    "LinkshopLedgerImbalance": "linkshop_ledger_imbalance_cents",
    "LinkshopPaymentNoticesRefused": "linkshop_payment_notices_total",
    "LinkshopProviderRefundsFailing": "linkshop_provider_refunds_total",
    "LinkshopWithdrawalsWaitingForReview": "linkshop_withdrawals_pending_review_oldest_seconds",
}
# Metrics not in shared/metrics.py that alerts and dashboards may use; each must be
# documented in docs/operations.md.
EXPORTER_METRICS = {"up", "rabbitmq_queue_messages"}
OWED_METRICS = {"linkshop_withdrawals_pending_review_oldest_seconds", "linkshop_revenue_cents_total"}
SECRETISH = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|_KEY$|^KEY|DATABASE_URL|BUS_URL|CREDENTIAL", re.I)
CREDENTIAL_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s:/@'\"]+:[^\s@'\"<>]+@", re.I)


# --- tools ------------------------------------------------------------------------------------

def missing(reason: str):
    message = f"{reason} (install: bash deploy/install-tools.sh)"
    if CI:
        pytest.fail(f"CI=true but {message}", pytrace=False)
    pytest.skip(message)


def tool(name: str) -> str:
    for candidate in (Path(sys.executable).parent / name, ROOT / ".venv" / "bin" / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if not found:
        missing(f"{name} not found")
    return found


def module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"python module {name} not installed")


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kwargs)


def load_yaml_all(text: str) -> list[dict]:
    yaml = module("yaml")
    return [doc for doc in yaml.safe_load_all(text) if doc]


@lru_cache(maxsize=None)
def _render(overlay: str) -> tuple[str, str]:
    path = K8S / "base" if overlay == "base" else K8S / "overlays" / overlay
    proc = run([tool("kubectl"), "kustomize", str(path)])
    return proc.stdout, proc.stderr if proc.returncode else ""


def rendered(overlay: str) -> list[dict]:
    out, err = _render(overlay)
    assert not err, f"kubectl kustomize {overlay} failed:\n{err}"
    return load_yaml_all(out)


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


@lru_cache(maxsize=None)
def _rules_text() -> str:
    return (PROM / "rules.yml").read_text(encoding="utf-8")


def rules() -> list[dict]:
    yaml = module("yaml")
    return [rule for group in yaml.safe_load(_rules_text())["groups"] for rule in group["rules"]]


def alerts() -> dict[str, dict]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


# --- metric names -----------------------------------------------------------------------------

@lru_cache(maxsize=None)
def known_metrics() -> frozenset[str]:
    """Exposition names of the metrics shared/metrics.py defines."""
    text = (ROOT / "shared" / "metrics.py").read_text(encoding="utf-8")
    names = set()
    for kind, name in re.findall(r"\b(Counter|Gauge|Histogram|Summary|Info|Enum)\(\s*[\"']([a-zA-Z_:][\w:]*)[\"']", text):
        names.add(name)
        if kind == "Counter":
            base = name[:-len("_total")] if name.endswith("_total") else name
            names |= {base + "_total", base + "_created"}
        if kind in ("Histogram", "Summary"):
            names |= {name + "_bucket", name + "_sum", name + "_count", name + "_created"}
    assert names, "no metric found in shared/metrics.py"
    return frozenset(names)


PROMQL_WORDS = {"by", "without", "and", "or", "unless", "on", "ignoring", "group_left", "group_right",
                "offset", "bool", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (a small lexer, enough for our own queries)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                   # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)                               # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)                              # ranges, subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([a-zA-Z_:][\w:]*)(\s*\()?", expr):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def assert_known(exprs: dict[str, str], what: str) -> None:
    allowed = known_metrics() | EXPORTER_METRICS | OWED_METRICS
    unknown = {f"{where}: {name}" for where, expr in exprs.items() for name in metric_names(expr)
               if name not in allowed}
    assert not unknown, f"{what} use metrics that shared/metrics.py does not define:\n" + "\n".join(sorted(unknown))


# --- docs anchors -----------------------------------------------------------------------------

@lru_cache(maxsize=None)
def doc_anchors() -> frozenset[str]:
    anchors = set()
    in_code = False
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code:
            continue
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:  # GitHub's slugs
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
        anchors |= set(re.findall(r'<a (?:id|name)="([^"]+)"', line))
    return frozenset(anchors)


# ============================================================================================
# Prometheus
# ============================================================================================

def test_promtool_check_rules():
    proc = run([tool("promtool"), "check", "rules", str(PROM / "rules.yml")])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_pass():
    proc = run([tool("promtool"), "test", "rules", str(PROM / "tests.yml")], cwd=PROM)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_alerts_issue_6_asks_for_exist_and_watch_the_right_metric():
    found = alerts()
    assert set(found) == set(ALERTS), f"alerts differ from the list: {sorted(set(found) ^ set(ALERTS))}"
    for name, metric in ALERTS.items():
        assert metric in metric_names(found[name]["expr"]), f"{name} does not use {metric}"


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    yaml = module("yaml")
    spec = yaml.safe_load((PROM / "tests.yml").read_text(encoding="utf-8"))
    assert spec["rule_files"] == ["rules.yml"]
    fires, quiet = set(), set()
    for group in spec["tests"]:
        inputs = " ".join(series["series"] for series in group.get("input_series", []))
        for case in group.get("alert_rule_test", []):
            name = case["alertname"]
            if case.get("exp_alerts"):
                fires.add(name)
            elif ALERTS.get(name, "\0") in inputs:  # quiet although its metric has data
                quiet.add(name)
    for name in alerts():
        assert name in fires, f"{name}: no promtool test where it fires"
        assert name in quiet, f"{name}: no promtool test where its metric has data and it stays quiet"


def test_every_alert_has_severity_service_summary_and_a_runbook_in_the_docs():
    anchors = doc_anchors()
    for name, rule in alerts().items():
        labels, annotations = rule.get("labels", {}), rule.get("annotations", {})
        assert labels.get("severity") in ("critical", "warning"), f"{name}: severity"
        assert "service" in labels or '"service"' in rule["expr"] or "(service)" in rule["expr"] \
            or "by (service" in rule["expr"], f"{name}: no service label for routing to the owning team"
        assert annotations.get("summary"), f"{name}: no summary"
        assert annotations.get("description"), f"{name}: no description"
        url = annotations.get("runbook_url", "")
        match = re.fullmatch(r"docs/operations\.md#([\w-]+)", url)
        assert match, f"{name}: runbook_url {url!r} is not docs/operations.md#<anchor>"
        assert match.group(1) == name.lower(), f"{name}: runbook anchor should be #{name.lower()}"
        assert match.group(1) in anchors, f"{name}: docs/operations.md has no section #{match.group(1)}"


def test_every_operations_md_link_used_in_the_repo_resolves():
    anchors = doc_anchors()
    texts = {DOCS: DOCS.read_text(encoding="utf-8")}
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.suffix in (".yml", ".yaml", ".json", ".py", ".sh", "") and path.stat().st_size < 2_000_000:
            texts[path] = path.read_text(encoding="utf-8", errors="replace")
    broken = set()
    for path, text in texts.items():
        pattern = r"\]\(#([\w-]+)\)" if path == DOCS else r"operations\.md#([\w-]+)"
        broken |= {f"{path.relative_to(ROOT)}: #{a}" for a in re.findall(pattern, text) if a not in anchors}
    assert not broken, "links to missing sections of docs/operations.md:\n" + "\n".join(sorted(broken))


def test_alerts_use_only_known_metrics():
    assert_known({name: rule["expr"] for name, rule in alerts().items()}, "alerts")


def test_metrics_beyond_shared_metrics_are_documented():
    docs = DOCS.read_text(encoding="utf-8")
    for name in EXPORTER_METRICS | OWED_METRICS:
        assert name in known_metrics() or f"`{name}" in docs, f"{name} is not documented in docs/operations.md"


def test_prometheusrule_is_in_sync_with_rules_yml():
    proc = run([sys.executable, str(PROM / "to_prometheusrule.py"), "--check"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yaml = module("yaml")
    rule_doc = yaml.safe_load((K8S / "base" / "prometheusrule.yaml").read_text(encoding="utf-8"))
    assert rule_doc["spec"]["groups"] == yaml.safe_load(_rules_text())["groups"]


# ============================================================================================
# Kubernetes
# ============================================================================================

@pytest.mark.parametrize("overlay", ("base",) + OVERLAYS)
def test_overlay_renders_and_validates_strictly(overlay):
    kv = module("kubernetes_validate")
    jsonschema = module("jsonschema")
    from kubernetes_validate.utils import SchemaNotFoundError

    _cache_schema_files(kv)
    docs = rendered(overlay)
    assert docs
    errors = []
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        crd = CRD_SCHEMAS.get((doc.get("apiVersion"), doc.get("kind")))
        if crd:
            validator = jsonschema.Draft202012Validator(json.loads(crd.read_text(encoding="utf-8")))
            errors += [f"{name}: {'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
            continue
        for version in K8S_VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
            except SchemaNotFoundError:
                errors.append(f"{name}: no schema for {doc.get('apiVersion')} in Kubernetes {version} "
                              f"(a CRD? ship a schema in deploy/k8s/schemas)")
            except kv.ValidationError as e:
                errors.append(f"{name} (k8s {version}): {'.'.join(map(str, e.path))}: {e.message}")
    assert not errors, "\n".join(errors)


def test_crd_schemas_are_strict():
    jsonschema = module("jsonschema")
    for path in CRD_SCHEMAS.values():
        schema = json.loads(path.read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["additionalProperties"] is False
        bad = {"apiVersion": "monitoring.coreos.com/v1", "kind": schema["properties"]["kind"]["const"],
               "metadata": {"name": "x"}, "spec": {"bogus": 1}}
        assert list(jsonschema.Draft202012Validator(schema).iter_errors(bad)), f"{path.name} accepts unknown fields"


def _cache_schema_files(kv) -> None:
    """kubernetes-validate re-reads its JSON schemas for every object; read each once."""
    utils = getattr(kv, "utils", None)
    original = getattr(utils, "schema_contents", None)
    if original is not None and not hasattr(original, "cache_info"):
        utils.schema_contents = lru_cache(maxsize=None)(original)


def _pod_specs(docs):
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc, doc["spec"]["template"]["spec"]


def _container_port(container: dict, port) -> int | None:
    for p in container.get("ports", []):
        if port in (p.get("name"), p["containerPort"]):
            return p["containerPort"]
    return None


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _prestop_seconds(container: dict) -> int:
    pre = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre:
        return int(pre["sleep"]["seconds"])
    command = pre.get("exec", {}).get("command", [])
    assert command[:1] == ["sleep"] and len(command) == 2, f"preStop should sleep, not {command}"
    return int(command[1])


def _gunicorn_conf() -> SimpleNamespace:
    namespace: dict = {"__file__": str(DEPLOY / "gunicorn.conf.py")}
    exec(compile((DEPLOY / "gunicorn.conf.py").read_text(encoding="utf-8"), "gunicorn.conf.py", "exec"), namespace)
    return SimpleNamespace(**{k: v for k, v in namespace.items() if not k.startswith("__")})


def _worker_drain_seconds() -> int:
    """How long the worker waits for its consumer on SIGTERM (shared/worker.py)."""
    match = re.search(r"consumer_thread\.join\(timeout=(\d+)", (ROOT / "shared" / "worker.py").read_text())
    return int(match.group(1)) if match else 60


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_hardened(overlay):
    docs = rendered(overlay)
    for doc, pod in _pod_specs(docs):
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        sc = pod.get("securityContext", {})
        assert sc.get("runAsNonRoot") is True, f"{name}: pod runAsNonRoot"
        assert sc.get("runAsUser", 1) != 0 and sc.get("runAsGroup", 1) != 0, f"{name}: runs as root"
        assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: seccomp"
        assert pod.get("automountServiceAccountToken") is False, f"{name}: mounts a service-account token"
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), name
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"] + pod.get("initContainers", []):
            cname = f"{name}/{c['name']}"
            csc = c.get("securityContext", {})
            assert csc.get("allowPrivilegeEscalation") is False, f"{cname}: allowPrivilegeEscalation"
            assert csc.get("readOnlyRootFilesystem") is True, f"{cname}: readOnlyRootFilesystem"
            assert csc.get("privileged") is not True, f"{cname}: privileged"
            assert "ALL" in csc.get("capabilities", {}).get("drop", []), f"{cname}: capabilities not dropped"
            assert not csc.get("capabilities", {}).get("add"), f"{cname}: adds capabilities"
            assert csc.get("runAsUser", 1) != 0, f"{cname}: runs as root"
            for kind in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    assert c.get("resources", {}).get(kind, {}).get(res), f"{cname}: no {res} {kind}"
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert "emptyDir" in volumes.get(mounts.get("/tmp"), {}), f"{cname}: /tmp is not an emptyDir"
            if c.get("image", "").endswith(":latest") and overlay == "prod":
                pytest.fail(f"{cname}: prod runs an image tagged latest")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_and_worker_deployments_per_service(overlay):
    docs = rendered(overlay)
    deployments = {d["metadata"]["name"]: d for d in of_kind(docs, "Deployment")}
    assert set(deployments) == {f"{s}-{c}" for s in SERVICES for c in ("api", "worker")} | {"web"}
    config_maps = {c["metadata"]["name"]: c for c in of_kind(docs, "ConfigMap")}
    conf = _gunicorn_conf()
    assert conf.worker_class == "gthread"
    for svc in SERVICES:
        for component in ("api", "worker"):
            d = deployments[f"{svc}-{component}"]
            name = d["metadata"]["name"]
            assert "replicas" not in d["spec"], f"{name}: replicas is owned by the HPA"
            labels = d["spec"]["template"]["metadata"]["labels"]
            assert labels["app.kubernetes.io/name"] == svc and labels["app.kubernetes.io/component"] == component
            assert labels.get("app.kubernetes.io/part-of") == "linkshop", f"{name}: part-of label (PodMonitor)"
            pod = d["spec"]["template"]["spec"]
            (c,) = pod["containers"]
            assert c["args"][:2] == [component, svc], f"{name}: args {c['args']}"
            env = _env(c)
            for source in c.get("envFrom", []):
                ref = source.get("configMapRef", {}).get("name")
                assert ref is None or ref in config_maps, f"{name}: ConfigMap {ref} is not rendered"
            config = {k: v for ref in c.get("envFrom", []) for k, v in
                      config_maps.get(ref.get("configMapRef", {}).get("name"), {}).get("data", {}).items()}
            assert "PROMETHEUS_MULTIPROC_DIR" not in config, "the ConfigMap must not set the multiproc dir"
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                http = c.get(probe, {}).get("httpGet")
                assert http, f"{name}: no HTTP {probe}"
                assert _container_port(c, http["port"]), f"{name}: {probe} port {http['port']} is not a container port"
            grace = pod["terminationGracePeriodSeconds"]
            if component == "api":
                assert c["livenessProbe"]["httpGet"]["path"] == f"/{svc}/healthz"
                assert c["readinessProbe"]["httpGet"]["path"] == f"/{svc}/readyz"
                mp = env["PROMETHEUS_MULTIPROC_DIR"]["value"]
                mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
                volumes = {v["name"]: v for v in pod["volumes"]}
                assert "emptyDir" in volumes[mounts[mp]], f"{name}: {mp} is not an emptyDir mount"
                graceful = int(env.get("GUNICORN_GRACEFUL_TIMEOUT", {}).get("value")
                               or config.get("GUNICORN_GRACEFUL_TIMEOUT") or conf.GRACEFUL_TIMEOUT_DEFAULT)
                prestop = _prestop_seconds(c)
                assert prestop == conf.PRESTOP_SECONDS, f"{name}: preStop {prestop}s, gunicorn.conf.py says {conf.PRESTOP_SECONDS}"
                assert grace >= prestop + graceful + 5, \
                    f"{name}: terminationGracePeriodSeconds {grace} < preStop {prestop} + graceful_timeout {graceful} + 5"
                assert graceful > 0 and conf.timeout > 0
            else:
                assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
                assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
                port = int(env["WORKER_PORT"]["value"])
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    assert _container_port(c, c[probe]["httpGet"]["port"]) == port, \
                        f"{name}: {probe} does not hit WORKER_PORT {port}"
                assert grace >= _worker_drain_seconds() + 10, f"{name}: grace {grace}s shorter than the worker's drain"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_a_pdb_and_an_hpa(overlay):
    docs = rendered(overlay)
    for d in of_kind(docs, "Deployment"):
        name, labels = d["metadata"]["name"], d["spec"]["template"]["metadata"]["labels"]
        pdbs = [p for p in of_kind(docs, "PodDisruptionBudget")
                if _selects(p["spec"]["selector"], labels)]
        assert len(pdbs) == 1, f"{name}: {len(pdbs)} PodDisruptionBudgets"
        spec = pdbs[0]["spec"]
        assert "maxUnavailable" in spec or spec.get("minAvailable") not in (None, "100%"), f"{name}: PDB blocks every drain"
        hpas = [h for h in of_kind(docs, "HorizontalPodAutoscaler")
                if h["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}]
        assert len(hpas) == 1, f"{name}: {len(hpas)} HorizontalPodAutoscalers"
        assert 1 <= hpas[0]["spec"]["minReplicas"] <= hpas[0]["spec"]["maxReplicas"]
    if overlay == "prod":
        for h in of_kind(docs, "HorizontalPodAutoscaler"):
            if h["metadata"]["name"].endswith("-api"):
                assert h["spec"]["minReplicas"] >= 2, f"{h['metadata']['name']}: a single API replica in prod"


def _selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value, op = labels.get(expr["key"]), expr["operator"]
        if op == "In" and value not in expr["values"] or op == "NotIn" and value in expr["values"] \
                or op == "Exists" and value is None or op == "DoesNotExist" and value is not None:
            return False
    return True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_ingress_and_podmonitor_reach_the_pods(overlay):
    docs = rendered(overlay)
    deployments = of_kind(docs, "Deployment")
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    assert set(services) == set(SERVICES) | {"web"}
    for name, svc in services.items():
        targets = [d for d in deployments if _selects({"matchLabels": svc["spec"]["selector"]},
                                                       d["spec"]["template"]["metadata"]["labels"])]
        expected = "web" if name == "web" else f"{name}-api"
        assert [d["metadata"]["name"] for d in targets] == [expected], f"Service {name} selects {targets}"
        (c,) = targets[0]["spec"]["template"]["spec"]["containers"]
        for port in svc["spec"]["ports"]:
            assert _container_port(c, port["targetPort"]), f"Service {name}: targetPort {port['targetPort']}"
    (ingress,) = of_kind(docs, "Ingress")
    routes = {}
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            routes[path["path"]] = (path["pathType"], backend["name"])
            port_names = {p.get("name") for p in services[backend["name"]]["spec"]["ports"]}
            assert backend["port"].get("name") in port_names or "number" in backend["port"]
    # Each service's prefix, and the storefront for every other path (the longest prefix wins).
    assert routes == {f"/{s}": ("Prefix", s) for s in SERVICES} | {"/": ("Prefix", "web")}
    (monitor,) = of_kind(docs, "PodMonitor")
    spec = monitor["spec"]
    pods = {d["metadata"]["name"]: d["spec"]["template"] for d in deployments}
    pods.update({j["metadata"]["name"]: j["spec"]["template"] for j in of_kind(docs, "Job")})
    scraped = {n for n, t in pods.items() if _selects(spec["selector"], t["metadata"]["labels"])}
    assert scraped == {d["metadata"]["name"] for d in deployments} - {"web"}, \
        "the PodMonitor must scrape every API and worker (the storefront has no metrics), nothing else"
    for endpoint in spec["podMetricsEndpoints"]:
        assert endpoint["path"] == "/metrics"
        for n in scraped:
            assert _container_port(pods[n]["spec"]["containers"][0], endpoint["port"]), f"{n}: no port {endpoint['port']}"
        targets = {r["targetLabel"]: r["sourceLabels"] for r in endpoint.get("relabelings", [])}
        assert targets.get("app") == ["__meta_kubernetes_pod_label_app_kubernetes_io_name"]
        assert targets.get("component") == ["__meta_kubernetes_pod_label_app_kubernetes_io_component"]
    assert "job=\"linkshop\"" in _rules_text() and spec["jobLabel"] == "app.kubernetes.io/part-of"
    (namespace,) = of_kind(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace["metadata"]["name"], doc["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_migrate_job_migrates_every_service_with_nothing_but_database_urls(overlay):
    """``services.manage migrate`` reads only the database URLs (shared.config.database_url):
    the Job gets no bus URL and no secret it does not need, least of all the vault key."""
    docs = rendered(overlay)
    (job,) = of_kind(docs, "Job")
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    (c,) = pod["containers"]
    assert c["args"][:1] == ["migrate"]
    env = _env(c)
    for svc in SERVICES:
        assert "secretKeyRef" in env[f"{svc.upper()}_DATABASE_URL"]["valueFrom"], svc
    for name in ("BUS_URL", "LINKSHOP_ADMIN_TOKEN", "LINKSHOP_VAULT_KEY", "LINKSHOP_TOKEN_SECRET",
                 "LINKSHOP_VAULT_PREVIOUS_KEYS", "LINKSHOP_SANDBOX_SECRET"):
        assert name not in env, f"migrate does not need {name}"
    assert set(env) == {f"{svc.upper()}_DATABASE_URL" for svc in SERVICES}


# Which pod may see which secret key (docs/operations.md#secrets): what the process reads.
SECRET_USERS = {
    "LINKSHOP_VAULT_KEY": {"delivery-api", "delivery-worker"},  # the worker e-mails the keys
    "LINKSHOP_SMTP_URL": {"delivery-worker"},
    "LINKSHOP_SANDBOX_SECRET": {"delivery-api"},
    **{name: {"delivery-api", "delivery-worker"} for name in (
        "LINKSHOP_EPAY_KEY", "LINKSHOP_WECHATPAY_PRIVATE_KEY", "LINKSHOP_WECHATPAY_APIV3_KEY",
        "LINKSHOP_STRIPE_SECRET_KEY", "LINKSHOP_STRIPE_WEBHOOK_SECRET")},
    # Alipay's app key also pays withdrawals out (payout's worker).
    "LINKSHOP_ALIPAY_PRIVATE_KEY": {"delivery-api", "delivery-worker", "payout-worker"},
    "LINKSHOP_TOKEN_SECRET": {f"{svc}-{c}" for svc in ("delivery", "referral", "payout") for c in ("api", "worker")},
    "LINKSHOP_ADMIN_TOKEN": {f"{svc}-{c}" for svc in SERVICES for c in ("api", "worker")},
    "BUS_URL": {f"{svc}-{c}" for svc in SERVICES for c in ("api", "worker")},
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_secret_is_mounted_only_where_it_is_used(overlay):
    docs = rendered(overlay)
    seen = {name: set() for name in SECRET_USERS}
    for doc, pod in _pod_specs(docs):
        for c in pod["containers"] + pod.get("initContainers", []):
            refs = {e["name"] for e in c.get("env", [])} | {
                e["valueFrom"]["secretKeyRef"]["key"] for e in c.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})}
            for name in SECRET_USERS:
                if name in refs:
                    seen[name].add(doc["metadata"]["name"])
    assert seen["LINKSHOP_VAULT_KEY"] == {"delivery-api", "delivery-worker"}, "the vault key belongs to delivery alone"
    for name, users in SECRET_USERS.items():
        assert seen[name] == users, f"{name}: mounted in {sorted(seen[name])}, used by {sorted(users)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_gets_the_secrets_its_service_requires(overlay):
    """The other side: a pod missing a secret its config requires would not start in real mode."""
    sys.path.insert(0, str(ROOT))
    from shared.config import KERNEL_SECRETS
    docs = rendered(overlay)
    for d in of_kind(docs, "Deployment"):
        svc = d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
        (c,) = d["spec"]["template"]["spec"]["containers"]
        if svc == "web":  # static pages: no secret at all
            assert not [e for e in c.get("env", []) if "valueFrom" in e], "the storefront pod needs no secret"
            continue
        env = _env(c)
        required = set(KERNEL_SECRETS[svc]) | {"BUS_URL", f"{svc.upper()}_DATABASE_URL"}
        if d["metadata"]["name"] == "delivery-api":
            required.add("LINKSHOP_VAULT_KEY")  # services/delivery/config.py
        for name in required:
            assert "secretKeyRef" in env.get(name, {}).get("valueFrom", {}), f"{d['metadata']['name']}: {name}"


def test_what_every_pod_shares_is_written_once():
    """Hardening, probe timings, resources and rollout live in deploy/k8s/base/common/; a
    service's file keeps only what is its own, so a change to them lands once."""
    yaml = module("yaml")
    for path in [K8S / "base" / f"{svc}.yaml" for svc in SERVICES] + [K8S / "base" / "migrate-job.yaml"]:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc["kind"] not in ("Deployment", "Job"):
                continue
            pod = doc["spec"]["template"]["spec"]
            assert "securityContext" not in pod, f"{path.name}: pod securityContext belongs in common/hardening.yaml"
            for c in pod["containers"]:
                assert "securityContext" not in c, f"{path.name}: container securityContext belongs in common/"
                if doc["kind"] == "Deployment":
                    for key in ("resources", "volumeMounts", "image", "lifecycle"):
                        assert key not in c, f"{path.name}: {key} belongs in common/"
                    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                        assert set(c.get(probe, {})) <= {"httpGet"}, f"{path.name}: {probe} timings belong in common/"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_literal_secrets_in_rendered_manifests(overlay):
    docs = rendered(overlay)
    assert not of_kind(docs, "Secret"), "Secrets are created outside the repository (docs/operations.md#secrets)"
    for doc, pod in _pod_specs(docs):
        for c in pod["containers"] + pod.get("initContainers", []):
            for e in c.get("env", []):
                if SECRETISH.search(e["name"]):
                    assert "secretKeyRef" in e.get("valueFrom", {}), \
                        f"{doc['metadata']['name']}: {e['name']} must come from a Secret"
            for source in c.get("envFrom", []):
                assert "secretRef" not in source, "reference secret keys one by one, not whole Secrets"
    for cm in of_kind(docs, "ConfigMap"):
        for key, value in cm.get("data", {}).items():
            assert not SECRETISH.search(key), f"ConfigMap {cm['metadata']['name']}: {key} looks like a secret"
            assert not CREDENTIAL_URL.search(str(value)), f"ConfigMap: {key} holds credentials"


def test_no_literal_secrets_in_deploy_sources():
    offenders = []
    for path in list(DEPLOY.rglob("*")):
        if not path.is_file() or path.suffix not in (".yml", ".yaml", ".json", ".sh", ".py", ".env", ""):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for pattern in (CREDENTIAL_URL, re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
                        re.compile(r"^\s*(kind:\s*Secret|stringData:)\s*$", re.M),
                        re.compile(r"secretGenerator", re.M)):
            if pattern.search(text):
                offenders.append(f"{path.relative_to(ROOT)}: {pattern.pattern}")
    assert not offenders, "\n".join(offenders)


# ============================================================================================
# Grafana
# ============================================================================================

def _dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(GRAFANA.glob("*.json"))}


def _exprs(board: dict) -> dict[str, str]:
    out = {}
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            out[f"{board['uid']}/{panel['title']}/{target['refId']}"] = target["expr"]
    return out


def test_dashboards_are_valid_and_up_to_date():
    proc = run([sys.executable, str(GRAFANA / "build.py"), "--check"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    boards = _dashboards()
    assert set(boards) == {"overview.json"} | {f"{s}.json" for s in SERVICES}
    uids = [b["uid"] for b in boards.values()]
    assert len(set(uids)) == len(uids)
    for name, board in boards.items():
        assert board["title"] and board["schemaVersion"] >= 36 and board["panels"], name
        ids = [p["id"] for p in board["panels"]]
        assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"
        for panel in board["panels"]:
            pos = panel["gridPos"]
            assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, f"{name}: {panel['title']} overflows"
            if panel["type"] != "row":
                assert panel["targets"] and all(t["expr"] for t in panel["targets"]), f"{name}: {panel['title']}"
                assert panel["datasource"]["uid"] == "${datasource}"


def test_dashboards_cover_what_the_issue_asks():
    boards = _dashboards()
    overview = " ".join(_exprs(boards["overview.json"]).values())
    for metric in ("linkshop_orders_total", "linkshop_delivery_latency_seconds_bucket", "linkshop_revenue_cents_total",
                   "linkshop_commission_cents_total", "linkshop_stock_available", "linkshop_http_requests_total",
                   "linkshop_event_lag_seconds_bucket"):
        assert metric in overview, f"overview lacks {metric}"
    for svc in SERVICES:
        text = " ".join(_exprs(boards[f"{svc}.json"]).values())
        for needle in ("linkshop_http_requests_total", "linkshop_http_request_duration_seconds_bucket",
                       "linkshop_events_consumed_total", "linkshop_outbox_pending",
                       f'rabbitmq_queue_messages{{queue="{svc}.dead"}}', f'service="{svc}"'):
            assert needle in text, f"{svc} dashboard lacks {needle}"


def test_dashboard_queries_use_only_known_metrics():
    exprs = {}
    for board in _dashboards().values():
        exprs.update(_exprs(board))
    assert_known(exprs, "dashboards")


def test_dashboard_queries_parse(tmp_path):
    promtool = tool("promtool")
    yaml = module("yaml")
    exprs = {}
    for board in _dashboards().values():
        exprs.update(_exprs(board))
    rules_ = [{"record": f"dashboard:query_{i}",
               "expr": expr.replace("$__rate_interval", "5m").replace("$namespace", ".*")}
              for i, expr in enumerate(exprs.values())]
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules_}]}))
    proc = run([promtool, "check", "rules", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ============================================================================================
# Image: Dockerfile, entrypoint, gunicorn
# ============================================================================================

def test_dockerfile_is_slim_non_root_and_uses_the_entrypoint():
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the image must end as a non-root user"
    uid = int(users[-1].split(":")[0])
    for overlay in OVERLAYS:
        for doc, pod in _pod_specs(rendered(overlay)):
            assert pod["securityContext"]["runAsUser"] == uid, f"{doc['metadata']['name']}: uid differs from the image"
    assert 'ENTRYPOINT ["/app/deploy/docker-entrypoint.sh"]' in text
    ignored = [line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for needed in ("shared", "services", "pyproject.toml", "deploy/docker-entrypoint.sh", "deploy/gunicorn.conf.py"):
        assert not any(needed == i or needed.startswith(i.rstrip("/") + "/") for i in ignored), f"{needed} is ignored"


def _stub_bin(tmp_path: Path) -> tuple[Path, Path]:
    """gunicorn, python and find stand-ins that record how they were called."""
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    for name in ("gunicorn", "python"):
        (bin_dir / name).write_text(textwrap.dedent(f"""\
            #!/bin/sh
            {{
              echo "cmd=$(basename "$0") $*"
              echo "PROMETHEUS_MULTIPROC_DIR=${{PROMETHEUS_MULTIPROC_DIR-unset}}"
              echo "pwd=$(pwd)"
              if [ -n "${{PROMETHEUS_MULTIPROC_DIR:-}}" ]; then ls -A "$PROMETHEUS_MULTIPROC_DIR" | sed 's/^/file=/'; fi
            }} > {record}
            exit 0
            """))
        (bin_dir / name).chmod(0o755)
    return bin_dir, record


def _entrypoint(args, tmp_path, bin_dir, **env):
    full_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "APP_DIR": str(ROOT), **env}
    return subprocess.run(["sh", str(DEPLOY / "docker-entrypoint.sh"), *args], capture_output=True, text=True,
                          env=full_env, timeout=10)


def test_entrypoint_api_wipes_the_multiproc_dir_and_execs_gunicorn(tmp_path):
    bin_dir, record = _stub_bin(tmp_path)
    mp = tmp_path / "mp"
    (mp / "old").mkdir(parents=True)
    (mp / "counter_123.db").write_text("stale")
    proc = _entrypoint(["api", "delivery", "--log-level", "debug"], tmp_path, bin_dir, PROMETHEUS_MULTIPROC_DIR=str(mp))
    assert proc.returncode == 0, proc.stderr
    lines = record.read_text().splitlines()
    assert lines[0] == f"cmd=gunicorn --config {ROOT}/deploy/gunicorn.conf.py services.delivery.wsgi:app --log-level debug"
    assert f"PROMETHEUS_MULTIPROC_DIR={mp}" in lines and f"pwd={ROOT}" in lines
    assert not [line for line in lines if line.startswith("file=")], "stale metric files survived"
    assert mp.is_dir()


def test_entrypoint_worker_and_migrate(tmp_path):
    bin_dir, record = _stub_bin(tmp_path)
    proc = _entrypoint(["worker", "payout"], tmp_path, bin_dir, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = record.read_text().splitlines()
    assert lines[:2] == ["cmd=python -m services.payout.worker", "PROMETHEUS_MULTIPROC_DIR=unset"]
    proc = _entrypoint(["migrate", "catalog", "risk"], tmp_path, bin_dir)
    assert proc.returncode == 0, proc.stderr
    assert record.read_text().splitlines()[0] == "cmd=python -m services.manage migrate catalog risk"
    proc = _entrypoint(["web"], tmp_path, bin_dir)  # the storefront
    assert proc.returncode == 0, proc.stderr
    assert record.read_text().splitlines()[0].startswith("cmd=gunicorn --config ") and \
        record.read_text().splitlines()[0].endswith("deploy/gunicorn.conf.py web.wsgi:app")


def test_entrypoint_refuses_unknown_services_and_unsafe_dirs(tmp_path):
    bin_dir, record = _stub_bin(tmp_path)
    marker = tmp_path / "find-called"
    (bin_dir / "find").write_text(f"#!/bin/sh\ntouch {marker}\n")  # never delete anything here
    (bin_dir / "find").chmod(0o755)
    for args, env in ((["api", "shop"], {}), (["worker", ""], {}), (["migrate", "nope"], {}),
                      (["api", "catalog"], {"PROMETHEUS_MULTIPROC_DIR": "/"}),
                      (["api", "catalog"], {"PROMETHEUS_MULTIPROC_DIR": "/tmp"}),
                      (["api", "catalog"], {"PROMETHEUS_MULTIPROC_DIR": "relative/dir"})):
        proc = _entrypoint(args, tmp_path, bin_dir, **env)
        assert proc.returncode == 64, (args, env, proc.stderr)
    assert not marker.exists() and not record.exists()


def test_gunicorn_conf_child_exit_marks_the_process_dead(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    conf = _gunicorn_conf()
    for name in ("gauge_livesum_4242.db", "gauge_livemax_4242.db", "counter_4242.db", "gauge_livesum_7.db"):
        (tmp_path / name).write_text("")
    conf.child_exit(None, SimpleNamespace(pid=4242))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_4242.db", "gauge_livesum_7.db"]
    assert conf.worker_class == "gthread" and conf.preload_app is False and conf.control_socket_disable is True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def test_gunicorn_multiprocess_metrics_and_graceful_stop(tmp_path):
    """gunicorn with deploy/gunicorn.conf.py: /metrics merges workers, a dead worker's live
    gauges go, SIGTERM exits cleanly within graceful_timeout."""
    module("gunicorn")
    (tmp_path / "deploy_probe_app.py").write_text(textwrap.dedent("""\
        import os
        from prometheus_client import Counter, Gauge
        from shared import metrics
        hits = Counter("deploytest_hits_total", "hits")
        live = Gauge("deploytest_live", "live", multiprocess_mode="livesum")
        def app(environ, start_response):
            if environ["PATH_INFO"] == "/metrics":
                body, content_type = metrics.render()
                start_response("200 OK", [("Content-Type", content_type)])
                return [body]
            hits.inc()
            live.set(1)
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [str(os.getpid()).encode()]
        """))
    mp = tmp_path / "mp"
    mp.mkdir()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GUNICORN_", "PROMETHEUS_"))}
    env.update(PROMETHEUS_MULTIPROC_DIR=str(mp), GUNICORN_BIND=f"127.0.0.1:{port}", GUNICORN_WORKERS="2",
               GUNICORN_GRACEFUL_TIMEOUT="5")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--config", str(DEPLOY / "gunicorn.conf.py"),
                             "--pythonpath", f"{ROOT},{tmp_path}", "deploy_probe_app:app"],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                pids = {_get(base + "/")}
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.1)
        for _ in range(19):
            pids.add(_get(base + "/"))
        metrics_text = _get(base + "/metrics")
        assert re.search(r"^deploytest_hits_total 20\.0$", metrics_text, re.M), metrics_text[-2000:]
        victim = int(sorted(pids)[0])
        assert (mp / f"gauge_livesum_{victim}.db").exists()
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (mp / f"gauge_livesum_{victim}.db").exists():
            assert time.monotonic() < deadline, "child_exit did not mark the dead worker"
            time.sleep(0.1)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - started < 5 + 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_prod_takes_real_payments_never_the_sandbox():
    """Issue 13: the prod overlay turns the sandbox off, lists real providers (whose keys come
    from the Secret linkshop-payments) and pays withdrawals by a real method."""
    sys.path.insert(0, str(ROOT))
    from services.delivery.payments import _registry
    docs = rendered("prod")
    (config,) = [cm for cm in of_kind(docs, "ConfigMap") if cm["metadata"]["name"].startswith("linkshop-config")]
    data = config["data"]
    assert data["LINKSHOP_SANDBOX_ENABLED"] == "false"
    providers = data["LINKSHOP_PAYMENT_PROVIDERS"].split(",")
    assert providers and "sandbox" not in providers and set(providers) <= set(_registry())
    assert data.get("LINKSHOP_PAYOUT_METHOD") in ("alipay", "export")
    for d in of_kind(docs, "Deployment"):
        if d["metadata"]["name"] in ("delivery-api", "delivery-worker"):
            env = _env(d["spec"]["template"]["spec"]["containers"][0])
            for name in providers:
                keys = [k for k in env if k.startswith(f"LINKSHOP_{name.upper()}_")]
                assert keys and all(env[k]["valueFrom"]["secretKeyRef"]["name"] == "linkshop-payments" for k in keys)
