"""A real Prometheus (Debian's) scrapes the services of the real-mode stack, with the
labels the alert rules expect; an order placed through the API shows up in
linkshop_orders_total and in the paid→delivered latency histogram, and the alert rules load."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import requests

from .helpers import eventually

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prometheus(stack, tmp_path_factory):
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but the prometheus binary is missing (bash deploy/install-tools.sh)")
        pytest.skip("prometheus is not installed (bash deploy/install-tools.sh installs Debian's)")
    workdir = tmp_path_factory.mktemp("prometheus")
    jobs = []
    for svc in stack.services:
        for component, url in (("api", stack.url(svc)), ("worker", stack.worker_url(svc))):
            target = url.removeprefix("http://")
            jobs.append(f"""      - targets: ['{target}']
        labels: {{app: '{svc}', component: '{component}'}}""")
    (workdir / "prometheus.yml").write_text(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ['{ROOT / "deploy" / "prometheus" / "rules.yml"}']
scrape_configs:
  - job_name: linkshop
    static_configs:
{chr(10).join(jobs)}
""")
    port = _free_port()
    log = (workdir / "prometheus.log").open("w")
    proc = subprocess.Popen([binary, f"--config.file={workdir / 'prometheus.yml'}",
                             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        def ready():
            try:
                return requests.get(f"{base}/-/ready", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False
        eventually(ready, timeout=30, message="prometheus did not become ready")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _query(base: str, expr: str) -> list:
    body = requests.get(f"{base}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_an_order_shows_up_in_prometheus(prometheus, shop):
    eventually(lambda: _query(prometheus, 'up{job="linkshop"} == 1') and
               len(_query(prometheus, 'up{job="linkshop"} == 1')) == 10, timeout=30,
               message="not every API and worker is scraped")
    before = _query(prometheus, 'sum(linkshop_orders_total{status="delivered"})')
    before = float(before[0]["value"][1]) if before else 0.0
    merchant = shop.create_merchant()
    product = shop.create_product(merchant)
    shop.wait_product_known(product["id"])
    shop.import_keys(merchant, product["id"], shop.new_keys(1, "PROM"))
    order = shop.order(product["id"]).json()
    assert shop.pay(order).json()["outcome"] in ("paid", "delivered")  # paid: risk has not answered yet
    shop.wait_delivered(order)

    def delivered_counted():
        result = _query(prometheus, 'sum(linkshop_orders_total{status="delivered", app="delivery"})')
        return result and float(result[0]["value"][1]) >= before + 1

    eventually(delivered_counted, timeout=20, message="the delivered order never reached Prometheus")
    eventually(lambda: _query(prometheus, 'sum(linkshop_delivery_latency_seconds_count) > 0'), timeout=20,
               message="the latency histogram never reached Prometheus")
    p99 = _query(prometheus, 'histogram_quantile(0.99, sum by (le) (linkshop_delivery_latency_seconds_bucket))')
    assert p99 and float(p99[0]["value"][1]) < 1.0
    rules = requests.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
    assert sum(len(g["rules"]) for g in rules) >= 10
    assert not any(r.get("health") == "err" for g in rules for r in g["rules"])
