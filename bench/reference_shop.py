"""The issue's bare-minimum shop, as a benchmark reference: not part of Linkshop.

The issue measured a minimal shop doing the same work per order (one Flask app under gunicorn
gthread, raw SQL on PostgreSQL, an outbox row per event, a relay publishing to RabbitMQ with
publisher confirms) and set Linkshop's goal at 80% of its throughput. This machine's speed
varies between runs, so the bench measures this shop on the same machine in the same run as
Linkshop. It is meant to be lean and honest: nothing slowed down on purpose, and no corner cut
on correctness (keys claimed under row locks, a payment recorded once, every event in the
same transaction as its change).

    product_id, secrets = setup(dsn, keys=10_000, price_cents=1000)   # before start()
    shop = start(port=8790, run_dir="var/reference")   # gunicorn 2 x 8 gthread + the relay
    ...                                                # the bench's load client on the port
    stop(shop)                                         # also deletes the broker's queue

It serves exactly the three routes the load client uses (bench/purchase.py ``Shop``) with
delivery's request and response shapes. ``REFERENCE_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/linkshop_reference``), ``BUS_URL``,
``REFERENCE_SANDBOX_SECRET`` (default ``sandbox-secret``), ``REFERENCE_VAULT_SECRET``.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
import uuid
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psycopg
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/linkshop_reference"
DEFAULT_BUS_URL = "amqp://guest:guest@127.0.0.1:5672//"
EXCHANGE, QUEUE = "reference.events", "reference.inbox"
THREADS = 8  # per gunicorn worker; also the size of each worker's connection pool

SCHEMA = """
DROP TABLE IF EXISTS outbox, payments, order_keys, orders, key_pool, card_keys, products CASCADE;
CREATE TABLE products (product_id text PRIMARY KEY, price_cents integer NOT NULL, currency text NOT NULL);
CREATE TABLE card_keys (key_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    product_id text NOT NULL REFERENCES products, secret bytea NOT NULL);
CREATE TABLE key_pool (key_id bigint PRIMARY KEY REFERENCES card_keys, product_id text NOT NULL);
CREATE INDEX key_pool_product ON key_pool (product_id, key_id);
CREATE TABLE orders (order_no text PRIMARY KEY, product_id text NOT NULL REFERENCES products,
    quantity integer NOT NULL, amount_cents integer NOT NULL, currency text NOT NULL, email text NOT NULL,
    status text NOT NULL, access_token_hash text NOT NULL, created_at timestamptz NOT NULL,
    paid_at timestamptz, delivered_at timestamptz);
CREATE TABLE order_keys (order_no text NOT NULL REFERENCES orders, position integer NOT NULL,
    key_id bigint NOT NULL REFERENCES card_keys, PRIMARY KEY (order_no, position));
CREATE TABLE payments (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, provider text NOT NULL,
    txn_id text NOT NULL, order_no text NOT NULL REFERENCES orders, amount_cents integer NOT NULL,
    currency text NOT NULL, received_at timestamptz NOT NULL, UNIQUE (provider, txn_id));
CREATE TABLE outbox (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, type text NOT NULL,
    body text NOT NULL, sent_at timestamptz);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
"""


def database_url() -> str:
    return os.environ.get("REFERENCE_DATABASE_URL", DEFAULT_DSN)


def vault() -> AESGCM:
    secret = os.environ.get("REFERENCE_VAULT_SECRET", "reference shop: benchmark keys only")
    return AESGCM(hashlib.sha256(secret.encode()).digest())


def seal(aead: AESGCM, product_id: str, plain: str) -> bytes:
    nonce = os.urandom(12)  # bound to its product (associated data), as Linkshop's vault does
    return nonce + aead.encrypt(nonce, plain.encode(), product_id.encode())


def event_row(type_: str, payload: dict) -> tuple[str, str]:
    body = {"id": str(uuid.uuid4()), "type": type_, "occurred_at": datetime.now(timezone.utc).isoformat(),
            "payload": payload}
    return type_, json.dumps(body, separators=(",", ":"))


# -- the web app ---------------------------------------------------------------------------------

class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class ConnectionPool:
    """Up to ``size`` autocommit connections, opened when first needed (psycopg_pool is not
    installed). A connection left broken or inside a transaction is closed, not reused."""

    def __init__(self, dsn: str, size: int):
        self.dsn, self._idle, self._slots = dsn, queue.LifoQueue(), threading.BoundedSemaphore(size)

    @contextmanager
    def connection(self):
        with self._slots:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = psycopg.connect(self.dsn, autocommit=True)
            try:
                yield conn
            finally:
                if conn.broken or conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.close()
                else:
                    self._idle.put(conn)


def _order_input(data) -> tuple[str, int, str]:
    if not isinstance(data, dict):
        raise ApiError(400, "invalid", "the body must be a JSON object")
    product_id, quantity, email = data.get("product_id"), data.get("quantity"), data.get("email")
    if not isinstance(product_id, str) or not product_id:
        raise ApiError(422, "invalid", "product_id is required")
    if not isinstance(quantity, int) or isinstance(quantity, bool) or not 1 <= quantity <= 10:
        raise ApiError(422, "invalid", "quantity must be an integer from 1 to 10")
    if not isinstance(email, str) or "@" not in email or len(email) > 254:
        raise ApiError(422, "invalid", "a valid email is required")
    return product_id, quantity, email.strip().lower()


def _notice(raw: bytes) -> dict:
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    fields = {"order_no": str, "amount_cents": int, "currency": str, "txn_id": str, "status": str}
    if not isinstance(data, dict) or any(type(data.get(k)) is not t for k, t in fields.items()):
        raise ApiError(400, "bad_notice", "the notification is malformed")
    return data


def create_app():
    from flask import Flask, jsonify, request

    app = Flask(__name__)
    pool = ConnectionPool(database_url(), THREADS)
    aead = vault()
    sandbox_secret = os.environ.get("REFERENCE_SANDBOX_SECRET", "sandbox-secret").encode()

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return jsonify({"error": {"code": exc.code, "message": exc.message}}), exc.status

    @app.get("/healthz")
    def healthz():
        with pool.connection() as conn:
            conn.execute("SELECT 1")
        return jsonify({"ok": True})

    @app.post("/delivery/v1/orders")
    def create_order():
        product_id, quantity, email = _order_input(request.get_json(silent=True))
        token = secrets.token_urlsafe(24)
        now = datetime.now(timezone.utc)
        order_no = secrets.token_hex(8)  # 64 random bits: a collision fails the insert, never mixes orders
        with pool.connection() as conn, conn.transaction():
            product = conn.execute("SELECT price_cents, currency FROM products WHERE product_id = %s",
                                   (product_id,)).fetchone()
            if product is None:
                raise ApiError(422, "unknown_product", "no such product on sale")
            amount, currency = product[0] * quantity, product[1]
            conn.execute("INSERT INTO orders (order_no, product_id, quantity, amount_cents, currency, email,"
                         " status, access_token_hash, created_at) VALUES (%s, %s, %s, %s, %s, %s, 'pending', %s, %s)",
                         (order_no, product_id, quantity, amount, currency, email,
                          hashlib.sha256(token.encode()).hexdigest(), now))
            claimed = [row[0] for row in conn.execute(
                "DELETE FROM key_pool WHERE key_id IN (SELECT key_id FROM key_pool WHERE product_id = %s"
                " ORDER BY key_id LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING key_id", (product_id, quantity))]
            if len(claimed) < quantity:  # raising rolls back: the claimed keys go back to the pool
                raise ApiError(409, "out_of_stock", "not enough keys in stock for this order")
            conn.execute("INSERT INTO order_keys (order_no, position, key_id)"
                         " SELECT %s, n - 1, key_id FROM unnest(%s::bigint[]) WITH ORDINALITY AS c (key_id, n)",
                         (order_no, claimed))
            conn.execute("INSERT INTO outbox (type, body) VALUES (%s, %s)", event_row("order.created", {
                "order_no": order_no, "product_id": product_id, "quantity": quantity, "amount_cents": amount,
                "currency": currency, "email": email, "created_at": now.isoformat()}))
        return jsonify({"order_no": order_no, "access_token": token, "amount_cents": amount,
                        "currency": currency, "status": "pending"}), 201

    @app.post("/delivery/v1/payments/sandbox/notify")
    def payment_notify():
        raw = request.get_data()
        expected = hmac.new(sandbox_secret, raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("X-Sandbox-Signature", "").strip().lower(), expected):
            raise ApiError(401, "bad_signature", "the notification signature is missing or wrong")
        notice = _notice(raw)
        order_no, now = notice["order_no"], datetime.now(timezone.utc)
        if notice["status"] != "paid":
            return jsonify({"ok": True, "order_no": order_no, "outcome": "ignored"})
        with pool.connection() as conn, conn.transaction():
            order = conn.execute("SELECT product_id, quantity, amount_cents, currency, email, status FROM orders"
                                 " WHERE order_no = %s FOR UPDATE", (order_no,)).fetchone()
            if order is None:
                raise ApiError(404, "not_found", "order not found")
            product_id, quantity, amount, currency, email, status = order
            if (notice["amount_cents"], notice["currency"]) != (amount, currency):
                raise ApiError(422, "amount_mismatch", "amount or currency does not match the order")
            recorded = conn.execute(
                "INSERT INTO payments (provider, txn_id, order_no, amount_cents, currency, received_at)"
                " VALUES ('sandbox', %s, %s, %s, %s, %s) ON CONFLICT (provider, txn_id) DO NOTHING RETURNING id",
                (notice["txn_id"], order_no, amount, currency, now)).fetchone()
            if recorded is None:
                return jsonify({"ok": True, "order_no": order_no, "outcome": "replay"})
            if status != "pending":  # a second payment: kept for a refund, the keys go out once
                return jsonify({"ok": True, "order_no": order_no, "outcome": "duplicate_payment"})
            conn.execute("UPDATE orders SET status = 'delivered', paid_at = %s, delivered_at = %s"
                         " WHERE order_no = %s", (now, now, order_no))
            conn.execute("INSERT INTO outbox (type, body) VALUES (%s, %s), (%s, %s)", (
                *event_row("order.paid", {"order_no": order_no, "amount_cents": amount, "currency": currency,
                                          "provider": "sandbox", "txn_id": notice["txn_id"],
                                          "paid_at": now.isoformat()}),
                *event_row("order.delivered", {"order_no": order_no, "product_id": product_id,
                                               "quantity": quantity, "amount_cents": amount, "email": email,
                                               "delivered_at": now.isoformat()})))
        return jsonify({"ok": True, "order_no": order_no, "outcome": "delivered"})

    @app.get("/delivery/v1/orders/<order_no>")
    def get_order(order_no):
        token = request.args.get("token", "")
        with pool.connection() as conn:
            rows = conn.execute(
                "SELECT o.status, o.access_token_hash, o.product_id, k.secret FROM orders o"
                " LEFT JOIN order_keys ok ON ok.order_no = o.order_no LEFT JOIN card_keys k ON k.key_id = ok.key_id"
                " WHERE o.order_no = %s ORDER BY ok.position", (order_no,)).fetchall()
        if not rows or not hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), rows[0][1]):
            raise ApiError(404, "not_found", "order not found")
        status, _, product_id, _ = rows[0]
        keys = [aead.decrypt(bytes(blob[:12]), bytes(blob[12:]), product_id.encode()).decode()
                for *_, blob in rows if blob is not None] if status == "delivered" else []
        return jsonify({"status": status, "keys": keys})

    return app


# -- the outbox relay ----------------------------------------------------------------------------

def declare_topology(channel) -> None:
    channel.exchange_declare(EXCHANGE, "topic", durable=True, auto_delete=False)
    channel.queue_declare(QUEUE, durable=True, auto_delete=False, arguments={"x-queue-type": "classic"})
    channel.queue_bind(QUEUE, EXCHANGE, "#")


class BatchConfirms:
    """Publisher confirms for a batch at once, as a sensible relay waits for them (and as
    Linkshop's does): publish every row, then one wait until the broker has acked them all."""

    def __init__(self, channel):
        self.channel, self.published, self.unconfirmed, self.nacked = channel, 0, set(), 0
        channel.confirm_select()
        channel.events["basic_ack"].add(lambda tag, multiple: self._settle(tag, multiple))
        channel.events["basic_nack"].add(lambda tag, multiple: self._settle(tag, multiple, nack=True))

    def _settle(self, tag: int, multiple: bool, nack: bool = False) -> None:
        self.nacked += nack
        self.unconfirmed = {t for t in self.unconfirmed if t > tag} if multiple else self.unconfirmed - {tag}

    def publish(self, bus, rows, timeout_s: float = 10.0) -> None:
        for _, type_, body in rows:
            self.channel.basic_publish(self.channel.prepare_message(
                body.encode(), content_type="application/json", properties={"delivery_mode": 2}),
                exchange=EXCHANGE, routing_key=type_)
            self.published += 1
            self.unconfirmed.add(self.published)
        deadline = time.monotonic() + timeout_s
        while self.unconfirmed:
            bus.drain_events(timeout=max(0.001, deadline - time.monotonic()))
        if self.nacked:
            raise RuntimeError(f"the broker nacked {self.nacked} events")


def relay_batch(db, bus, confirms: BatchConfirms) -> int:
    """Publish up to 500 unsent events, confirmed by the broker, then mark them sent, all
    under the rows' locks: a failure anywhere leaves them unsent, to go again."""
    with db.transaction():
        rows = db.execute("SELECT id, type, body FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT 500"
                          " FOR UPDATE SKIP LOCKED").fetchall()
        if rows:
            confirms.publish(bus, rows)
            db.execute("UPDATE outbox SET sent_at = now() WHERE id = ANY(%s)", ([row[0] for row in rows],))
    return len(rows)


def relay_main(ready_file: str | None = None) -> None:
    from kombu import Connection

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        try:
            with psycopg.connect(database_url(), autocommit=True) as db, \
                    Connection(os.environ.get("BUS_URL", DEFAULT_BUS_URL)) as bus:
                channel = bus.channel()
                declare_topology(channel)
                confirms = BatchConfirms(channel)
                if ready_file:
                    Path(ready_file).touch()
                while not stop.is_set():
                    if not relay_batch(db, bus, confirms):
                        stop.wait(0.005)
        except Exception:  # the database or the broker went away: the rows stay unsent, go again
            traceback.print_exc()
            stop.wait(1.0)


# -- set-up, start and stop for the bench --------------------------------------------------------

def setup(dsn: str, keys: int, price_cents: int) -> tuple[str, list[str]]:
    """Create the database if missing and the tables afresh, one product and ``keys`` keys."""
    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(psycopg.conninfo.make_conninfo(dsn, dbname="postgres"), autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    product_id, aead = str(uuid.uuid4()), vault()
    plain = [f"REF-{secrets.token_hex(12)}" for _ in range(keys)]
    with psycopg.connect(dsn) as conn:  # one transaction, committed at the end of the block
        conn.execute(SCHEMA)
        conn.execute("INSERT INTO products VALUES (%s, %s, 'CNY')", (product_id, price_cents))
        with conn.cursor().copy("COPY card_keys (product_id, secret) FROM STDIN") as copy:
            for secret in plain:
                copy.write_row((product_id, seal(aead, product_id, secret)))
        conn.execute("INSERT INTO key_pool SELECT key_id, product_id FROM card_keys WHERE product_id = %s",
                     (product_id,))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE")
    return product_id, plain


@dataclass
class Handle:
    base_url: str
    run_dir: Path
    processes: dict[str, subprocess.Popen]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def start(port: int, run_dir, dsn: str | None = None, timeout: float = 30.0) -> Handle:
    """gunicorn (2 workers x 8 threads, gthread) and the relay, each in its own session;
    returns once /healthz answers and the relay has declared the topology."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    base_url, ready_file = f"http://127.0.0.1:{port}", run_dir / "reference-relay.ready"
    if _answers(f"{base_url}/healthz"):
        raise RuntimeError(f"something already answers on port {port}")
    ready_file.unlink(missing_ok=True)
    env = {**os.environ, "REFERENCE_DATABASE_URL": dsn or database_url(), "PYTHONUNBUFFERED": "1"}
    commands = {
        "relay": [sys.executable, "-m", "bench.reference_shop", "relay", str(ready_file)],
        # keep-alive longer than the bench's pauses between phases, as deploy/gunicorn.conf.py has
        "web": [sys.executable, "-m", "gunicorn", "bench.reference_shop:create_app()", "--bind", f"127.0.0.1:{port}",
                "--workers", "2", "--worker-class", "gthread", "--threads", str(THREADS), "--keep-alive", "65",
                "--graceful-timeout", "10", "--worker-tmp-dir", "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp",
                "--no-control-socket"],  # else gunicorn >= 24 opens one under ~/.gunicorn, shared by all
    }
    handle = Handle(base_url, run_dir, {})
    for name, command in commands.items():
        with open(run_dir / f"reference-{name}.log", "ab") as log:
            handle.processes[name] = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not (ready_file.exists() and _answers(f"{base_url}/healthz")):
        exited = [name for name, proc in handle.processes.items() if proc.poll() is not None]
        if exited or time.monotonic() > deadline:
            stop(handle)
            raise RuntimeError(f"reference shop {'exited: ' + ', '.join(exited) if exited else 'not ready'};"
                               f" logs in {run_dir}")
        time.sleep(0.1)
    return handle


def stop(handle: Handle, grace: float = 10.0) -> None:
    """SIGTERM both process groups, SIGKILL what is left after ``grace``; then delete the
    queue (with the events in it) and the exchange."""
    def signal_group(proc: subprocess.Popen, sig: int) -> None:
        with suppress(ProcessLookupError):  # the whole group has exited already
            os.killpg(proc.pid, sig)

    for proc in handle.processes.values():
        signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in handle.processes.values():
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            signal_group(proc, signal.SIGKILL)
            proc.wait()
    from kombu import Connection
    try:
        with Connection(os.environ.get("BUS_URL", DEFAULT_BUS_URL)) as bus:
            channel = bus.channel()
            channel.queue_delete(QUEUE)
            channel.exchange_delete(EXCHANGE)
    except Exception as exc:  # stopping must not hide the error that led here
        print(f"reference shop: could not delete {QUEUE} and {EXCHANGE}: {exc!r}", file=sys.stderr)


if __name__ == "__main__":
    if sys.argv[1:2] != ["relay"]:
        sys.exit("usage: python -m bench.reference_shop relay [READY_FILE]")
    relay_main(sys.argv[2] if len(sys.argv) > 2 else None)
