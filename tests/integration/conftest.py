"""Integration tests: every service as its own gunicorn and worker process, on real PostgreSQL
and RabbitMQ, started by the same code as ``make up`` (scripts/stack.py).

Each run gets fresh databases (``lsit_<run>_<svc>``), its own RabbitMQ virtual host when
``rabbitmqctl`` can make one (else the default vhost, with the linkshop topology deleted first so
stale queue arguments cannot collide; ``LINKSHOP_TEST_VHOST=/`` forces that), and its own ports
(1808x web, 1918x workers), so that a `make up` stack on 808x keeps running untouched. Without
PostgreSQL or RabbitMQ the tests are skipped with one line saying which is missing, except
under CI=true, where they fail.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from scripts import stack as stackmod
from shared import topology
from shared.config import SERVICES

from . import audit
from tests.kit.backends import fold_skip, postgres_unreachable, require_server

from tests.kit.fakes.epay import FakeEpay

from .helpers import Broker, Shop

HERE = Path(__file__).resolve().parent
RUNS_DIR = stackmod.DEFAULT_RUN_DIR
PG_URL = os.environ.get("LINKSHOP_PG_URL", stackmod.DEFAULT_PG_URL).rstrip("/")
AMQP_BASE = os.environ.get("LINKSHOP_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672").rstrip("/")
WEB_BASE = int(os.environ.get("LINKSHOP_TEST_PORT_BASE", 18080))
WORKER_BASE = WEB_BASE + stackmod.WORKER_PORT_OFFSET
TEST_ENV = {
    "BUS_RETRY_DELAYS_MS": "200,500",
    "BUS_MAX_ATTEMPTS": "3",
    "LINKSHOP_STOCK_SYNC_INTERVAL_S": "0.5",
    "LINKSHOP_RELAY_INTERVAL_S": "0.02",
    "LINKSHOP_SANDBOX_SECRET": "sandbox-secret",
    "LOG_LEVEL": "DEBUG",  # the log audit is stronger when everything that could be logged is
    "GUNICORN_ACCESS_LOG": "1",  # off in production and `make up`; here the audit reads it too
    # As in production (deploy/k8s/base): delivery waits for risk.order.assessed and payout for
    # risk.withdrawal.assessed, so every test runs through the wiring that is deployed.
    "LINKSHOP_RISK_REQUIRED": "true",
    # The tests stand in for the ingress: a buyer's address comes from X-Forwarded-For, so a
    # test can order from an address of its own (a blocklisted one) without touching the others.
    "LINKSHOP_TRUSTED_PROXIES": "127.0.0.1",
}
# retry queue names of earlier runs whose arguments could clash with ours
KNOWN_RETRY_DELAYS = {200, 500, 1000, 5000, 30000, 120000}
TAP_QUEUE = audit.TAP_QUEUE  # bound to every event type: the audit reads every payload of the run
VHOST_PREFIX = "linkshop_it_"
DB_PREFIX = "lsit_"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


# -- reachability --------------------------------------------------------------------------------

_SKIP_PREFIX = "integration: "


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Every test skipped for missing servers reports the same place, so `-ra` prints one line."""
    outcome = yield
    fold_skip(outcome.get_result(), _SKIP_PREFIX, __file__, _SKIP_LINE)


def _unreachable() -> str | None:
    import pika

    unreachable = postgres_unreachable(PG_URL)
    if unreachable:
        return unreachable
    try:
        params = pika.URLParameters(AMQP_BASE + "/%2F?connection_attempts=1&socket_timeout=3&blocked_connection_timeout=5")
        pika.BlockingConnection(params).close()
    except Exception as exc:
        parts = urlsplit(AMQP_BASE)
        return f"RabbitMQ is not reachable at {parts.hostname}:{parts.port or 5672} ({type(exc).__name__})"
    return None


@pytest.fixture(scope="session")
def infra():
    require_server(_SKIP_PREFIX, _unreachable(), "the servers")


_SKIP_LINE = infra.__wrapped__.__code__.co_firstlineno if hasattr(infra, "__wrapped__") else 0


# -- RabbitMQ isolation --------------------------------------------------------------------------

def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess | None:
    ctl = shutil.which("rabbitmqctl") or ("/usr/sbin/rabbitmqctl" if os.path.exists("/usr/sbin/rabbitmqctl") else None)
    if not ctl:
        return None
    try:
        return subprocess.run([ctl, "-q", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _own_vhost(name: str) -> bool:
    """A private virtual host for this run, if this machine lets us make one."""
    user = urlsplit(AMQP_BASE).username or "guest"
    made = _rabbitmqctl("add_vhost", name)
    if made is None or made.returncode != 0:
        return False
    perms = _rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
    return perms is not None and perms.returncode == 0


def _forget_stale_vhosts(current: str) -> None:
    """Vhosts of earlier runs that died before their teardown, unless someone is connected."""
    listed = _rabbitmqctl("list_vhosts", "name")
    conns = _rabbitmqctl("list_connections", "vhost")
    if not listed or listed.returncode or not conns or conns.returncode:
        return
    busy = {line.strip() for line in conns.stdout.splitlines()}
    for name in (line.strip() for line in listed.stdout.splitlines()):
        if name.startswith(VHOST_PREFIX) and name != current and name not in busy:
            _rabbitmqctl("delete_vhost", name)


def _reset_topology(broker: Broker, shared_vhost: bool) -> None:
    """Delete the linkshop exchange and queues (a fresh vhost has none: then this is a no-op)."""
    if shared_vhost:
        for svc in topology.CONSUMES:
            if broker.queue_exists(topology.inbox_queue(svc)) and broker.counts(topology.inbox_queue(svc))[1]:
                pytest.fail(f"a stack (`make up`?) consumes {topology.inbox_queue(svc)} on vhost '/': "
                            "stop it with `make down`, or let the tests make their own vhost (rabbitmqctl)",
                            pytrace=False)
    delays = KNOWN_RETRY_DELAYS | {int(d) for d in TEST_ENV["BUS_RETRY_DELAYS_MS"].split(",")}
    with broker.channel() as ch:
        for svc in topology.CONSUMES:
            for name in [topology.inbox_queue(svc), topology.dead_queue(svc),
                         *(topology.retry_queue(svc, d) for d in sorted(delays))]:
                ch.queue_delete(name)
        ch.queue_delete(TAP_QUEUE)
        ch.exchange_delete(topology.EXCHANGE)


def _forget_stale_databases(current_prefix: str) -> None:
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    u = make_url(PG_URL + "/postgres")
    with psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                         dbname="postgres", autocommit=True) as conn:
        names = [row[0] for row in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (DB_PREFIX.replace("_", r"\_") + "%",))]
        for name in names:
            if not name.startswith(current_prefix):
                try:  # a database still in use belongs to a run in progress: leave it
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
                except psycopg.Error:
                    pass


# -- the stack -----------------------------------------------------------------------------------

class Run:
    """What one test session started: the stack, its broker and the secrets handed out."""

    def __init__(self, stack, broker: Broker, run_id: str, shared_vhost: bool):
        self.stack = stack
        self.broker = broker
        self.run_id = run_id
        self.shared_vhost = shared_vhost
        self.card_secrets: list[str] = []
        self.credentials: list[str] = []
        self.tapped: list[bytes] = []  # what the audit took off the tap queue so far

    @property
    def env(self) -> dict:
        return self.stack.env


@pytest.fixture(scope="session")
def run(infra):
    run_id = time.strftime("%m%d%H%M%S") + "_" + secrets.token_hex(2)
    db_prefix = f"{DB_PREFIX}{run_id}_"
    vhost = f"{VHOST_PREFIX}{run_id}"
    run_dir = RUNS_DIR / f"it-{run_id}"
    for old in RUNS_DIR.glob("it-*"):  # keep only this run's logs (the last run stays for post-mortem)
        shutil.rmtree(old, ignore_errors=True)
    _forget_stale_databases(db_prefix)

    forced = os.environ.get("LINKSHOP_TEST_VHOST")  # e.g. "/": use it, topology reset and all
    shared_vhost = bool(forced) or not _own_vhost(vhost)
    if shared_vhost:
        vhost = forced or "/"
    else:
        _forget_stale_vhosts(vhost)
    encoded = quote(vhost, safe="")
    broker = Broker(f"{AMQP_BASE}/{encoded}")
    _reset_topology(broker, shared_vhost)
    with broker.channel() as ch:  # the tap exists before the first event is published
        ch.exchange_declare(topology.EXCHANGE, "topic", durable=True)
        ch.queue_declare(TAP_QUEUE, durable=True)
        ch.queue_bind(TAP_QUEUE, topology.EXCHANGE, "#")

    # A real provider beside the sandbox: a fake epay gateway the real processes call and are
    # notified by (tests/integration/test_payments_real.py). The sandbox stays the default.
    epay = FakeEpay()
    delivery_url = f"http://127.0.0.1:{stackmod.ports_from(WEB_BASE, WORKER_BASE)['delivery'][0]}"
    overrides = {**TEST_ENV, **epay.env(), "LINKSHOP_PAYMENT_PROVIDERS": "sandbox,epay",
                 "LINKSHOP_PUBLIC_URL": delivery_url, "LINKSHOP_PAYMENT_QUERY_AFTER_S": "1",
                 "LINKSHOP_PAYMENT_QUERY_EVERY_S": "1",
                 "BUS_URL": f"{AMQP_BASE}/{'/' if vhost == '/' else encoded}"}
    for svc in SERVICES:
        overrides[f"{svc.upper()}_DATABASE_URL"] = f"{PG_URL}/{db_prefix}{svc}"
    stack, leaks = None, []
    try:
        stack = stackmod.start_stack(overrides, stackmod.ports_from(WEB_BASE, WORKER_BASE), run_dir,
                                     db_prefix=db_prefix)
        this_run = Run(stack, broker, run_id, shared_vhost)
        this_run.epay = epay
        this_run.credentials.append(epay.key)  # the audit: the provider's key is never logged
        yield this_run
        # The whole run's leak audit, whatever ran and in whatever order: once every process
        # has stopped, every log line is written and every event is on the tap.
        stack.stop(grace=10)
        leaks = audit.leaks(this_run)
    finally:
        epay.close()
        if stack is not None:
            stack.stop(grace=10)
        for svc in SERVICES:
            try:
                stackmod.drop_database(f"{PG_URL}/{db_prefix}{svc}")
            except Exception as exc:  # noqa: BLE001 - teardown reports, never masks the result
                print(f"could not drop {db_prefix}{svc}: {exc}")
        if shared_vhost:
            try:
                _reset_topology(broker, shared_vhost=False)
            except Exception as exc:  # noqa: BLE001
                print(f"could not clean the RabbitMQ topology: {exc}")
        else:
            _rabbitmqctl("delete_vhost", vhost)
    if leaks:
        pytest.fail(f"the run leaked {len(leaks)} card secret(s) or credential(s) (logs in {run_dir}): "
                    f"{leaks[:10]}", pytrace=False)


@pytest.fixture(scope="session")
def stack(run):
    return run.stack


@pytest.fixture(scope="session")
def epay(run) -> FakeEpay:
    """The fake epay gateway the stack is configured with."""
    return run.epay


@pytest.fixture(scope="session")
def broker(run) -> Broker:
    return run.broker


@pytest.fixture(scope="session")
def shop(run) -> Shop:
    return Shop(run.stack, run.env["LINKSHOP_ADMIN_TOKEN"], run.env["LINKSHOP_SANDBOX_SECRET"],
                run.card_secrets, run.credentials)


@pytest.fixture
def workers_running(stack):
    """Whatever a test killed or stopped, every worker runs again afterwards."""
    yield stack
    for svc in stack.services:
        if not stack.alive(svc, "worker"):
            stack.start_worker(svc)
