"""Purchase benchmark against real mode on this machine (``make bench``).

Starts the stack itself (``python -m scripts.stack up``, what ``make up`` runs) when nothing
answers on the catalog and delivery ports, and stops it again afterwards unless ``--keep-up``.

    1. set-up: a merchant, a product, enough keys imported for every order;
    2. delivery is restarted without waiting for risk's decision: issue 2 measures the purchase
       path (catalog + delivery), as the bare-minimum shop it is compared with does no screening;
    3. one buyer, one purchase after the other: paid -> delivered latency without contention;
    4. N concurrent buyers, each ordering and paying in a loop, every service consuming;
    5. the purchase path alone (the other services' workers paused), N buyers, then a sweep over
       buyer counts with the CPU each process spent per order;
    6. delivery back on the stack's own setting (production and `make up`: wait for risk), N
       buyers paying at once: paid -> keys visible, through risk's decision over the bus;
    7. every order is read back with its access token: each must be delivered, and no key may
       appear in two orders (``duplicate_keys``).

At each sweep point the same load also runs twice against the issue's bare-minimum shop
(bench/reference_shop.py: one Flask app, raw SQL, an outbox row per event, a relay with
confirms), started for it alone, and then once more against Linkshop: the issue's goal is a
share of that shop's throughput, and this machine's speed drifts, so the two are measured
side by side, in an order whose means cancel a steady drift (``share_of_reference`` per
point, ``share_of_bare_minimum`` for the best points).

paid -> delivered is the round trip of the signed payment callback: delivery marks the order
paid and sells its keys in the same transaction, so the provider's call returning is the
moment the buyer's keys are there (the bench checks the outcome says ``delivered``). Beside
it, the ``server_*`` figures come from delivery's own ``linkshop_delivery_latency_seconds``
histogram (scraped before and after each phase; quantiles interpolated within buckets).

Where the PostgreSQL server runs without autovacuum (this machine's does), each phase starts
with a VACUUM ANALYZE of the service databases, as autovacuum would have done by then.

The load client runs on the same cores as the services (as in the issue's reference figures);
it uses keep-alive ``http.client`` connections, which cost far less CPU than ``requests``.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from bench.common import machine, percentile, write_result

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / "var" / "run"


class Http:
    """One keep-alive connection per thread."""

    def __init__(self, base_url: str):
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port or 80
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        return conn

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                retry: bool = False) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json", **(headers or {})}
        for attempt in (1, 2):
            conn = self._conn()
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (ConnectionError, http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt == 2 or not retry:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, data=None, headers=None, retry=False) -> tuple[int, dict]:
        body = json.dumps(data, separators=(",", ":")).encode() if data is not None else None
        status, raw = self.request(method, path, body, headers, retry)
        try:
            return status, json.loads(raw) if raw else {}
        except ValueError:
            return status, {"raw": raw[:200].decode(errors="replace")}


def _ready(base_url: str, service: str) -> bool:
    try:
        status, _ = Http(base_url).request("GET", f"/{service}/readyz")
        return status == 200
    except OSError:
        return False


def ensure_stack(catalog: str, delivery: str) -> bool:
    """True when this run started the stack (and so should stop it)."""
    if _ready(catalog, "catalog") and _ready(delivery, "delivery"):
        return False
    print("nothing answers on the catalog and delivery ports: starting real mode (make up) ...", flush=True)
    if subprocess.run([sys.executable, "-m", "scripts.stack", "up"], cwd=ROOT).returncode != 0:
        raise SystemExit("bench: could not start real mode (see above)")
    return True


def restart_delivery(risk_required: bool | None, behind_proxy: bool = True) -> None:
    """Restart delivery (web and worker) of the local ``make up`` stack with
    ``LINKSHOP_RISK_REQUIRED`` set (None: the stack's own setting). ``behind_proxy``: the bench
    stands in for the ingress, giving each buyer an address of their own in X-Forwarded-For;
    without it every order would come from 127.0.0.1 and risk's per-address velocity rule
    would rightly hold them for review."""
    from scripts.stack import Stack, build_env, default_ports
    env, _ = build_env(run_dir=RUN_DIR)
    stack = Stack(env, default_ports(), RUN_DIR)
    overrides = {"LINKSHOP_TRUSTED_PROXIES": "127.0.0.1"} if behind_proxy else {}
    if risk_required is not None:
        overrides["LINKSHOP_RISK_REQUIRED"] = str(risk_required).lower()
    stack.restart_service("delivery", overrides or None)


def vacuum_databases() -> bool | None:
    """VACUUM ANALYZE every service database of the local stack, when the server runs without
    autovacuum (as this machine's does): there a long run leaves dead rows behind every update
    of orders, outbox and products, and each phase would pay for the earlier ones. Returns
    whether autovacuum is on (None: could not tell)."""
    import psycopg
    from sqlalchemy.engine import make_url
    from scripts.stack import build_env, database_urls
    env, _ = build_env(run_dir=RUN_DIR)
    autovacuum = None
    for url in database_urls(env).values():
        u = make_url(url)
        try:
            with psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                                 dbname=u.database, autocommit=True) as conn:
                autovacuum = conn.execute("SHOW autovacuum").fetchone()[0] == "on"
                if not autovacuum:
                    conn.execute("VACUUM ANALYZE")
        except psycopg.Error as exc:
            print(f"  (vacuum skipped: {exc})", flush=True)
    return autovacuum


def source_version() -> str | None:
    """The commit measured, ``+dirty`` when tracked files differ from it (``LINKSHOP_COMMIT``
    where there is no git checkout, e.g. in a container or an exported tree)."""
    if os.environ.get("LINKSHOP_COMMIT"):
        return os.environ["LINKSHOP_COMMIT"]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def admin_token() -> str:
    token = os.environ.get("LINKSHOP_ADMIN_TOKEN")
    if token:
        return token
    try:
        for line in (RUN_DIR / "secrets.env").read_text().splitlines():
            if line.startswith("LINKSHOP_ADMIN_TOKEN="):
                return line.split("=", 1)[1].strip()
    except FileNotFoundError:
        pass
    raise SystemExit("LINKSHOP_ADMIN_TOKEN is not set and var/run/secrets.env has none: "
                     "export the token the running stack uses")


class Shop:
    def __init__(self, catalog: str, delivery: str, sandbox_secret: str):
        self.catalog, self.delivery = Http(catalog), Http(delivery)
        self.secret = sandbox_secret.encode()
        # New buyers each run: on a stack kept up between runs, risk would rightly hold the
        # same emails and addresses ordering again for review (velocity rules).
        self.run, self.address_base = secrets.token_hex(3), secrets.randbelow(1 << 24)
        self._next_buyer = 0

    def new_buyers(self, count: int) -> range:
        """Numbers for ``count`` buyers not seen before in this run: a buyer whose email came
        back in every phase would rightly pass risk's per-email velocity limit."""
        start, self._next_buyer = self._next_buyer, self._next_buyer + count
        return range(start, start + count)

    def setup(self, token: str, keys: int, price_cents: int) -> tuple[str, list[str]]:
        status, merchant = self.catalog.json("POST", "/catalog/v1/merchants", {
            "name": "bench", "email": "bench@example.com"}, {"Authorization": f"Bearer {token}"})
        if status != 201:
            raise SystemExit(f"creating the merchant failed: {status} {merchant}")
        auth = {"Authorization": f"Bearer {merchant['api_key']}"}
        status, product = self.catalog.json("POST", "/catalog/v1/products", {
            "title": "bench key", "price_cents": price_cents, "max_per_order": 10}, auth)
        if status != 201:
            raise SystemExit(f"creating the product failed: {status} {product}")
        secrets_ = [f"BENCH-{secrets.token_hex(12)}" for _ in range(keys)]
        for start in range(0, keys, 20000):
            batch = secrets_[start:start + 20000]
            deadline = time.monotonic() + 30
            while True:  # delivery learns the merchant and product from catalog's events
                status, body = self.delivery.json("POST", f"/delivery/v1/products/{product['id']}/keys",
                                                  {"keys": batch}, auth)
                if status not in (401, 404) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            if status not in (200, 201) or body.get("imported") != len(batch):
                raise SystemExit(f"importing keys failed: {status} {body}")
        return product["id"], secrets_

    def purchase(self, product_id: str, n: int) -> dict:
        t0 = time.perf_counter()
        a = (self.address_base + n) & 0xFFFFFF
        status, order = self.delivery.json("POST", "/delivery/v1/orders", {
            "product_id": product_id, "quantity": 1, "email": f"buyer{n}-{self.run}@example.com"},
            {"X-Forwarded-For": f"10.{a >> 16}.{a >> 8 & 255}.{a & 255}"})
        t1 = time.perf_counter()
        if status != 201:
            return {"error": f"order {status} {order.get('error', {}).get('code')}"}
        raw = json.dumps({"order_no": order["order_no"], "amount_cents": order["amount_cents"],
                          "currency": order["currency"], "txn_id": f"bench-{order['order_no']}",
                          "status": "paid"}, separators=(",", ":")).encode()
        signature = hmac.new(self.secret, raw, hashlib.sha256).hexdigest()
        t2 = time.perf_counter()
        status, body = self.delivery.request("POST", "/delivery/v1/payments/sandbox/notify", raw,
                                             {"X-Sandbox-Signature": signature}, retry=True)
        t3 = time.perf_counter()
        outcome = json.loads(body).get("outcome") if status == 200 else None
        waited_for_risk = outcome == "paid"
        if waited_for_risk:  # risk screening on and its decision not in yet: the keys come when it is
            outcome, t3 = self.wait_delivered(order)
        if outcome != "delivered":
            return {"error": f"notify {status} {body[:120]!r}", "order": order}
        return {"order": order, "order_ms": (t1 - t0) * 1000, "paid_to_delivered_ms": (t3 - t2) * 1000,
                "done_at": t3, "waited_for_risk": waited_for_risk}

    def wait_delivered(self, order: dict, timeout_s: float = 30.0) -> tuple[str | None, float]:
        """Poll the buyer's order page (as a buyer's browser would) until the keys are there:
        often at first, then every 200 ms (faster polling by 32 buyers would be most of the
        load; the server-side histogram gives the exact figure beside this one)."""
        deadline, pause = time.perf_counter() + timeout_s, 0.005
        status = None
        while time.perf_counter() < deadline:
            status, _ = self.keys_of(order)
            if status == "delivered":
                break
            time.sleep(pause)
            pause = min(pause * 1.5, 0.2)
        return status, time.perf_counter()

    def keys_of(self, order: dict) -> tuple[str, list[str]]:
        status, view = self.delivery.json(
            "GET", f"/delivery/v1/orders/{order['order_no']}?token={order['access_token']}", retry=True)
        return (view.get("status") if status == 200 else f"http {status}"), view.get("keys", [])


LATENCY_METRIC = "linkshop_delivery_latency_seconds_bucket"


def latency_buckets(shop: Shop) -> dict[float, float]:
    """Cumulative bucket counts of delivery's paid -> delivered histogram (server side)."""
    try:
        status, raw = shop.delivery.request("GET", "/metrics", retry=True)
    except OSError:
        return {}
    buckets: dict[float, float] = {}
    if status != 200:
        return buckets
    for line in raw.decode().splitlines():
        if line.startswith(LATENCY_METRIC + "{"):
            labels, _, value = line.rpartition(" ")
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + float(value)
    return buckets


def histogram_quantile(q: float, before: dict, after: dict) -> float | None:
    """Prometheus' histogram_quantile over the samples observed between two scrapes, in ms."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank, prev_bound, prev_count = q * counts[-1], 0.0, 0.0
    for bound, count in zip(bounds, counts):
        if count >= rank:
            if bound == float("inf"):
                return round(prev_bound * 1000, 2)
            fraction = (rank - prev_count) / (count - prev_count) if count > prev_count else 1.0
            return round((prev_bound + (bound - prev_bound) * fraction) * 1000, 2)
        prev_bound, prev_count = bound, count
    return None


def server_side(before: dict, after: dict) -> dict:
    return {"server_paid_to_delivered_p50_ms": histogram_quantile(0.5, before, after),
            "server_paid_to_delivered_p99_ms": histogram_quantile(0.99, before, after)}


def run_single(shop: Shop, product_id: str, count: int) -> list[dict]:
    return [shop.purchase(product_id, n) for n in shop.new_buyers(count)]


def run_load(shop: Shop, product_id: str, buyers: int, count: int) -> tuple[list[dict], float]:
    counter = iter(shop.new_buyers(count))
    lock = threading.Lock()
    results: list[dict] = []
    start = threading.Barrier(buyers + 1)

    def buyer():
        mine = []
        start.wait()
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                break
            mine.append(shop.purchase(product_id, n))
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=buyer) for _ in range(buyers)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    return results, time.perf_counter() - began


DOWNSTREAM = ("referral", "payout", "risk")
SERVICES = ("catalog", "delivery", *DOWNSTREAM)


def _worker_pids(services) -> dict[str, int]:
    pids = {}
    for svc in services:
        try:
            pids[svc] = int((RUN_DIR / f"{svc}-worker.pid").read_text().strip())
        except (OSError, ValueError):
            pass
    return pids


def _inbox_depth(services) -> int:
    import pika
    total = 0
    conn = pika.BlockingConnection(pika.URLParameters(os.environ.get("BUS_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")))
    try:
        channel = conn.channel()
        for svc in services:
            total += channel.queue_declare(f"{svc}.inbox", passive=True).method.message_count
    finally:
        conn.close()
    return total


@contextmanager
def downstream_paused(services=DOWNSTREAM):
    """The other services' workers stopped (SIGSTOP: their events wait, durable, in their
    inboxes) for the duration; yields their pids by service."""
    pids = _worker_pids(services)
    for pid in pids.values():
        os.kill(pid, signal.SIGSTOP)
    try:
        yield pids
    finally:
        for pid in pids.values():
            os.kill(pid, signal.SIGCONT)


def wait_drained(pids: dict[str, int], timeout_s: float) -> float:
    """Seconds until the inboxes of ``pids``' services are empty (or ``timeout_s`` passed)."""
    began = time.perf_counter()
    while _inbox_depth(pids) and time.perf_counter() < began + timeout_s:
        time.sleep(0.5)
    return time.perf_counter() - began


def run_purchase_path(shop: Shop, product_id: str, buyers: int, count: int) -> dict:
    """The issue's comparison: the purchase path alone (catalog + delivery, each with its
    worker, the outbox relayed to RabbitMQ with confirms), the other services' workers paused;
    afterwards they resume and the time they take to work off the backlog is measured too."""
    with downstream_paused() as pids:
        results, elapsed = run_load(shop, product_id, buyers, count)
    figures = {**summarize(results), "results": results, "elapsed_s": round(elapsed, 3), "paused_workers": sorted(pids),
               "orders_per_s": round(len([r for r in results if "error" not in r]) / elapsed, 1) if elapsed else 0.0}
    try:
        backlog = _inbox_depth(pids)
        drained = wait_drained(pids, 600)
        figures.update(downstream_backlog_events=backlog, downstream_drain_s=round(drained, 1),
                       downstream_events_per_s=round(backlog / drained, 1) if drained else None)
    except Exception as exc:  # the broker check is extra information, never a reason to fail
        figures["downstream_error"] = repr(exc)
    return figures


def cpu_seconds_by_process() -> dict[str, float]:
    """CPU time (user + system) so far of each part of the stack on this machine, from /proc:
    the share of the two cores each part costs per order, whatever else the machine runs."""
    import re
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        web, worker = re.search(r"services\.(\w+)\.wsgi", cmd), re.search(r"services\.(\w+)\.worker", cmd)
        if "bench.reference_shop" in cmd:
            part = "bare-minimum relay" if " relay" in cmd else "bare-minimum web"
        elif web:
            part = f"{web.group(1)} web"
        elif worker:
            part = f"{worker.group(1)} worker"
        elif cmd.startswith("postgres"):
            part = "postgresql"
        elif "beam.smp" in cmd:
            part = "rabbitmq"
        else:
            continue
        found[part] = found.get(part, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return found


def machine_busy_seconds() -> float:
    """CPU seconds all processes have used (/proc/stat): with the stack's own share it tells
    how much else was running during a phase, which would skew its figures."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cpu_ms_per_order(before: dict, after: dict, client_s: float, orders: int) -> dict[str, float]:
    if not orders:
        return {}
    per = {part: round((after[part] - before.get(part, 0.0)) * 1000 / orders, 2) for part in after}
    per = {part: ms for part, ms in per.items() if ms >= 0.01}
    per["load client"] = round(client_s * 1000 / orders, 2)
    per["total"] = round(sum(per.values()), 2)
    return dict(sorted(per.items(), key=lambda kv: -kv[1]))


def measure_point(shop: Shop, product_id: str, buyers: int, orders: int) -> dict:
    """One sweep point: ``orders`` purchases by ``buyers`` concurrent buyers, with the CPU each
    process spent per order and what else the machine ran meanwhile."""
    cpu0, client0, busy0 = cpu_seconds_by_process(), os.times(), machine_busy_seconds()
    results, elapsed = run_load(shop, product_id, buyers, orders)
    cpu1, client1, busy1 = cpu_seconds_by_process(), os.times(), machine_busy_seconds()
    figures = summarize(results)
    client_s = (client1.user + client1.system) - (client0.user + client0.system)
    return {"buyers": buyers, "orders_per_s": round(figures["completed"] / elapsed, 1) if elapsed else 0.0,
            **{k: v for k, v in figures.items() if k != "errors"}, "errors": figures["errors"],
            "cpu_ms_per_order": cpu_ms_per_order(cpu0, cpu1, client_s, figures["completed"]),
            # CPU seconds per second spent outside the stack and this client (0 = a quiet machine)
            "other_load_cores": round(max(0.0, (busy1 - busy0) - client_s
                                          - sum(cpu1[k] - cpu0.get(k, 0.0) for k in cpu1)) / elapsed, 2),
            "orders": [r["order"] for r in results if "order" in r]}


REFERENCE_PORT = 8790


def measure_reference(buyers: int, orders: int, warmup: int = 50) -> dict:
    """The same point against the issue's bare-minimum shop (bench/reference_shop.py), started
    for it alone on a fresh database while Linkshop's stack idles."""
    from bench import reference_shop
    product_id, _ = reference_shop.setup(reference_shop.database_url(), warmup + orders, price_cents=1000)
    handle = reference_shop.start(REFERENCE_PORT, RUN_DIR)
    try:
        shop = Shop(handle.base_url, handle.base_url, os.environ.get("REFERENCE_SANDBOX_SECRET", "sandbox-secret"))
        run_single(shop, product_id, warmup)
        point = measure_point(shop, product_id, buyers, orders)
        statuses = Counter(shop.keys_of(order)[0] for order in point.pop("orders"))
    finally:
        reference_shop.stop(handle)
    return {**point, "order_statuses": dict(statuses)}


def run_sweep(shop: Shop, product_id: str, buyer_counts: list[int], orders: int, reference: bool = False) -> list[dict]:
    """The purchase path (downstream workers paused, as in ``run_purchase_path``) at several
    numbers of concurrent buyers: where throughput levels off and what latency costs there.

    With ``reference``, each point is compared with the bare-minimum shop in the order
    Linkshop, shop, shop, Linkshop: this machine's speed drifts within minutes, and the means
    of such a sequence cancel a steady drift (``orders_per_s`` is the mean of the two runs,
    the other figures are the first run's). Each run starts once the paused services have
    worked off their backlog."""
    points = []
    for buyers in buyer_counts:
        point = _purchase_path_point(shop, product_id, buyers, orders)
        points.append(point)
        if reference:
            with downstream_paused(SERVICES):  # idle, they still poll: not the bare-minimum shop's cost
                refs = [measure_reference(buyers, orders), measure_reference(buyers, orders)]
            again = _purchase_path_point(shop, product_id, buyers, orders, quiet=True)
            point = points[-1] = {**_both_runs(point, again), "orders": point["orders"] + again["orders"]}
            ref = point["reference"] = {**_both_runs(*refs), "order_statuses": dict(
                Counter(refs[0]["order_statuses"]) + Counter(refs[1]["order_statuses"]))}
            point["share_of_reference"] = round(point["orders_per_s"] / ref["orders_per_s"], 3) \
                if ref["orders_per_s"] else None
            print(f"  bare-minimum shop, {buyers:>3} buyers: {ref['orders_per_s_runs']} orders/s, paid->delivered "
                  f"p50 {ref['paid_to_delivered_p50_ms']} ms, p99 {ref['paid_to_delivered_p99_ms']} ms; "
                  f"CPU {ref['cpu_ms_per_order'].get('total')} ms/order; then Linkshop {again['orders_per_s']}: "
                  f"Linkshop makes {point['share_of_reference']:.0%} of its throughput", flush=True)
    return points


def _both_runs(first: dict, second: dict) -> dict:
    """Two runs of a point as one: the first's figures, the mean throughput and every error."""
    runs = [first["orders_per_s"], second["orders_per_s"]]
    return {**first, "orders_per_s_runs": runs, "orders_per_s": round(sum(runs) / 2, 1),
            "errors": dict(Counter(first["errors"]) + Counter(second["errors"]))}


def _purchase_path_point(shop: Shop, product_id: str, buyers: int, orders: int, quiet: bool = False) -> dict:
    vacuum_databases()
    with downstream_paused() as pids:
        point = measure_point(shop, product_id, buyers, orders)
    if not quiet:
        print(f"  purchase path, {buyers:>3} buyers: {point['orders_per_s']:>6} orders/s, paid->delivered "
              f"p50 {point['paid_to_delivered_p50_ms']} ms, p99 {point['paid_to_delivered_p99_ms']} ms; "
              f"CPU {point['cpu_ms_per_order'].get('total')} ms/order; other load {point['other_load_cores']} cores",
              flush=True)
    try:  # let the paused services work off their backlog before the next run
        wait_drained(pids, 300)
    except Exception:
        pass
    return point


def summarize(results: list[dict]) -> dict:
    ok = [r for r in results if "error" not in r]
    pd = [r["paid_to_delivered_ms"] for r in ok]
    om = [r["order_ms"] for r in ok]
    errors = Counter(r["error"] for r in results if "error" in r)
    return {"completed": len(ok), "errors": dict(errors),
            "delivered_after_risk_decision": sum(1 for r in ok if r.get("waited_for_risk")),
            "paid_to_delivered_p50_ms": round(percentile(pd, 50), 2),
            "paid_to_delivered_p99_ms": round(percentile(pd, 99), 2),
            "order_p50_ms": round(percentile(om, 50), 2), "order_p99_ms": round(percentile(om, 99), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.purchase", description=__doc__.split("\n\n")[0])
    parser.add_argument("--buyers", type=int, default=int(os.environ.get("BENCH_BUYERS", 32)),
                        help="concurrent buyers in the load phase (default 32)")
    parser.add_argument("--orders", type=int, default=int(os.environ.get("BENCH_ORDERS", 3000)),
                        help="purchases in the load phase (default 3000)")
    parser.add_argument("--single", type=int, default=300, help="sequential purchases of the one-buyer phase")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--catalog", default=os.environ.get("BENCH_CATALOG_URL", "http://127.0.0.1:8081"))
    parser.add_argument("--delivery", default=os.environ.get("BENCH_DELIVERY_URL", "http://127.0.0.1:8082"))
    parser.add_argument("--sweep", default=os.environ.get("BENCH_SWEEP", "1,4,8,16,32"),
                        help="buyer counts for the purchase-path sweep, comma-separated ('' to skip)")
    parser.add_argument("--sweep-orders", type=int, default=1500, help="purchases per sweep point")
    parser.add_argument("--screened-orders", type=int, default=1000,
                        help="purchases of the last phase, with risk screening on ('0' to skip)")
    parser.add_argument("--keep-up", action="store_true", help="leave a stack this run started running")
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="skip the bare-minimum shop measured after each sweep point")
    args = parser.parse_args(argv)

    started = ensure_stack(args.catalog, args.delivery)
    # Issue 2's comparison is the purchase path alone: delivery sells on payment without waiting
    # for risk's decision. The last phase puts the stack's own setting back (production: wait).
    local = args.delivery == parser.get_default("delivery")
    if local:
        print("delivery restarted with LINKSHOP_RISK_REQUIRED=false for the purchase-path phases", flush=True)
        restart_delivery(risk_required=False)
    try:
        shop = Shop(args.catalog, args.delivery, os.environ.get("LINKSHOP_SANDBOX_SECRET", "sandbox-secret"))
        sweep = [int(n) for n in args.sweep.split(",") if n.strip()]
        total = (args.warmup + args.single + args.orders * 2 + args.sweep_orders * len(sweep) * (1 + args.reference)
                 + args.screened_orders)
        t = time.perf_counter()
        product_id, imported = shop.setup(admin_token(), total, price_cents=1000)
        print(f"set-up: product {product_id}, {len(imported)} keys imported in {time.perf_counter() - t:.1f}s",
              flush=True)

        autovacuum = vacuum_databases()
        warm = run_single(shop, product_id, args.warmup)
        h0 = latency_buckets(shop)
        single = run_single(shop, product_id, args.single)
        h1 = latency_buckets(shop)
        s = {**summarize(single), **server_side(h0, h1)}
        print(f"one buyer: paid->delivered p50 {s['paid_to_delivered_p50_ms']} ms, "
              f"p99 {s['paid_to_delivered_p99_ms']} ms ({s['completed']} purchases)", flush=True)

        vacuum_databases()
        load, elapsed = run_load(shop, product_id, args.buyers, args.orders)
        l_ = {**summarize(load), **server_side(h1, latency_buckets(shop))}
        orders_per_s = l_["completed"] / elapsed if elapsed else 0.0
        print(f"{args.buyers} buyers: {l_['completed']} purchases in {elapsed:.2f}s = {orders_per_s:.0f} orders/s, "
              f"paid->delivered p50 {l_['paid_to_delivered_p50_ms']} ms, p99 {l_['paid_to_delivered_p99_ms']} ms",
              flush=True)

        vacuum_databases()
        path_only = run_purchase_path(shop, product_id, args.buyers, args.orders)
        print(f"{args.buyers} buyers, purchase path only: {path_only['orders_per_s']} orders/s, paid->delivered "
              f"p50 {path_only['paid_to_delivered_p50_ms']} ms, p99 {path_only['paid_to_delivered_p99_ms']} ms; "
              f"then {path_only.get('downstream_backlog_events')} events worked off by {DOWNSTREAM} in "
              f"{path_only.get('downstream_drain_s')} s", flush=True)

        points = run_sweep(shop, product_id, sweep, args.sweep_orders, args.reference) if sweep else []
        best = max(points, key=lambda p: p["orders_per_s"], default=None)
        references = [p["reference"] for p in points if "reference" in p]
        best_reference = max(references, key=lambda p: p["orders_per_s"], default=None)
        if best and best_reference:
            print(f"best points: Linkshop {best['orders_per_s']} orders/s ({best['buyers']} buyers), bare-minimum "
                  f"shop {best_reference['orders_per_s']} ({best_reference['buyers']} buyers): "
                  f"{best['orders_per_s'] / best_reference['orders_per_s']:.0%}", flush=True)

        screened, screened_figures = [], None
        if local and args.screened_orders:
            restart_delivery(risk_required=None)
            vacuum_databases()
            # (no server_* figures here: an order delivered when risk's decision arrives is
            # counted by delivery's worker, whose metrics this bench does not scrape)
            screened, elapsed_s = run_load(shop, product_id, args.buyers, args.screened_orders)
            screened_figures = {**summarize(screened), "buyers": args.buyers, "elapsed_s": round(elapsed_s, 3),
                                "orders_per_s": round(len([r for r in screened if "error" not in r]) / elapsed_s, 1)}
            print(f"{args.buyers} buyers, all services, delivery waiting for risk's decision (the stack's own "
                  f"setting): {screened_figures['orders_per_s']} orders/s, paid->keys visible p50 "
                  f"{screened_figures['paid_to_delivered_p50_ms']} ms, p99 {screened_figures['paid_to_delivered_p99_ms']} ms "
                  f"({screened_figures['delivered_after_risk_decision']} waited for the decision)", flush=True)

        everything = [r["order"] for r in warm + single + load + path_only.pop("results", []) if "order" in r]
        everything += [order for point in points for order in point.pop("orders")]
        everything += [r["order"] for r in screened if "order" in r]
        with ThreadPoolExecutor(8) as pool:
            views = list(pool.map(shop.keys_of, everything))
        statuses = Counter(status for status, _ in views)
        keys = Counter(key for _, ks in views for key in ks)
        duplicate_keys = sum(n - 1 for n in keys.values() if n > 1)
        foreign = len(set(keys) - set(imported))

        figures = {
            "orders_per_s": round(orders_per_s, 1),
            "purchase_path_orders_per_s": path_only["orders_per_s"],
            "purchase_path_paid_to_delivered_p50_ms": path_only["paid_to_delivered_p50_ms"],
            "purchase_path_paid_to_delivered_p99_ms": path_only["paid_to_delivered_p99_ms"],
            "paid_to_delivered_p50_ms": l_["paid_to_delivered_p50_ms"],
            "paid_to_delivered_p99_ms": l_["paid_to_delivered_p99_ms"],
            "single_buyer_paid_to_delivered_p50_ms": s["paid_to_delivered_p50_ms"],
            "single_buyer_paid_to_delivered_p99_ms": s["paid_to_delivered_p99_ms"],
            "duplicate_keys": duplicate_keys,
            "keys_not_imported": foreign,
            "order_statuses": dict(statuses),
            "load": {"buyers": args.buyers, "purchases": args.orders, "elapsed_s": round(elapsed, 3), **l_},
            "single_buyer": {"purchases": args.single, **s},
            "purchase_path_only": path_only,
            "purchase_path_sweep": points,
            "with_risk_screening": screened_figures,
            # the goal: at least 80% of the bare-minimum shop's throughput, on the same machine
            "bare_minimum_best": {k: best_reference[k] for k in (
                "buyers", "orders_per_s", "paid_to_delivered_p50_ms", "paid_to_delivered_p99_ms")}
            if best_reference else None,
            "share_of_bare_minimum": round(best["orders_per_s"] / best_reference["orders_per_s"], 3)
            if best and best_reference else None,
            "purchase_path_best": {k: best[k] for k in ("buyers", "orders_per_s", "paid_to_delivered_p50_ms",
                                                        "paid_to_delivered_p99_ms")} if best else None,
            "stack": {"web_workers": int(os.environ.get("LINKSHOP_WEB_WORKERS", 2)),
                      "web_threads": int(os.environ.get("LINKSHOP_WEB_THREADS", 8)),
                      "started_by_bench": started},
            "nproc": machine()["cpus"],
            # False: the server runs without autovacuum, so the bench vacuumed before each phase
            "postgres_autovacuum": autovacuum,
            "commit": source_version(),
            "paid_to_delivered": "client side: round trip of the signed payment callback, which sells the keys "
                                 "in its transaction (with risk screening on and no decision yet: until the "
                                 "buyer's order page shows the keys); server_*: delivery's "
                                 "linkshop_delivery_latency_seconds histogram (notice arrival -> commit), "
                                 "interpolated within buckets",
        }
        write_result("purchase", figures)
        bad = (duplicate_keys or foreign or set(statuses) != {"delivered"} or l_["errors"] or s["errors"]
               or path_only["errors"] or any(point["errors"] for point in points)
               or any(ref["errors"] or set(ref["order_statuses"]) != {"delivered"} for ref in references)
               or (screened_figures or {}).get("errors"))
        return 1 if bad else 0
    finally:
        if local:
            restart_delivery(risk_required=None, behind_proxy=False)
        if started and not args.keep_up:
            subprocess.run([sys.executable, "-m", "scripts.stack", "down"], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
