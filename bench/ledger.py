"""The payout ledger's postings per second, on SQLite (embedded) and PostgreSQL (real mode).

Each backend gets a fresh database made by payout's own migrations, then:

    settle      delivered + commission events (3 levels) through payout's real consumer and
                handlers, one transaction per event as the worker runs them: 3 postings
                for the sale, 4 for its commission entry = 7 per order; one writer, then ``--writers`` concurrent writers (every
                append takes the chain-head lock, so this shows what the lock costs);
    release     the worker's release job over every order: 8 postings per order;
    verify      ``GET /payout/v1/ledger/verify``'s full recomputation (chain, sums, balances).

Run: ``python -m bench.ledger [--orders N] [--writers W] [--pg URL | --no-pg]``; writes
bench/results/ledger-<date>.json. PostgreSQL: a database ``linkshop_bench_ledger`` is created
on the server of ``--pg`` and dropped afterwards.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from datetime import timedelta

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from bench.common import write_result
from services.payout import domain, ledger
from services.payout.config import PayoutConfig
from services.payout.events import build_handlers
from services.payout.models import Base, Posting, inbox
from shared.db import Database
from shared.events import make_envelope, utcnow
from shared.inbox import Consumer
from services.manage import upgrade

PG_URL = os.environ.get("BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
DB_NAME = "linkshop_bench_ledger"
HOLD = 3600


def _events(prefix: str, n: int, t0) -> list[list[dict]]:
    """Per order: its delivered event and its commission event (3 lines)."""
    orders = []
    for i in range(n):
        no = f"{prefix}{i:07d}"
        delivered = make_envelope("delivery.order.delivered", {
            "order_no": no, "product_id": "prd_b", "merchant_id": f"mer_{i % 50}", "quantity": 1,
            "amount_cents": 10000, "cost_cents": 6000, "currency": "CNY", "fee_bps": 200,
            "delivered_at": t0.isoformat()}, producer="delivery")
        accrued = make_envelope("referral.commission.accrued", {
            "order_no": no, "merchant_id": f"mer_{i % 50}", "product_id": "prd_b", "amount_cents": 10000,
            "lines": [{"user_id": f"usr_{(i * 7 + k) % 5000}", "level": k + 1, "rate_bps": r, "amount_cents": r}
                      for k, r in enumerate((800, 400, 200))]}, producer="referral")
        orders.append([delivered, accrued])
    return orders


def _postings(db: Database) -> int:
    with db.read() as s:
        return s.scalar(select(func.count()).select_from(Posting))


def _settle(db: Database, consumer: Consumer, orders: list[list[dict]], writers: int) -> dict:
    before = _postings(db)
    chunks = [orders[i::writers] for i in range(writers)]
    errors = []

    def work(chunk):
        try:
            for events in chunk:
                for envelope in events:
                    consumer.handle(envelope)
        except Exception as exc:  # noqa: BLE001 - reported in the figures
            errors.append(repr(exc))

    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    moved = _postings(db) - before
    return {"writers": writers, "orders": len(orders), "transactions": 2 * len(orders), "postings": moved,
            "seconds": round(elapsed, 3), "postings_per_s": round(moved / elapsed, 1),
            "orders_per_s": round(len(orders) / elapsed, 1), "errors": errors[:3]}


def run_backend(url: str, orders: int, writers: int) -> dict:
    upgrade("payout", url)
    db = Database(url, Base.metadata)
    cfg = PayoutConfig(hold_seconds=HOLD, refund_window_seconds=HOLD)
    consumer = Consumer("payout", db, inbox, build_handlers(cfg))
    t0 = utcnow()
    result = {"single_writer": _settle(db, consumer, _events("S", orders, t0), 1)}
    result["concurrent_writers"] = _settle(db, consumer, _events("C", orders, t0), writers)

    before = _postings(db)
    started = time.perf_counter()
    released = 0
    while True:
        with db.write() as s:
            n = domain.release_due(s, t0 + timedelta(seconds=HOLD + 1), cfg.release_batch)
        released += n
        if n < cfg.release_batch:
            break
    elapsed = time.perf_counter() - started
    moved = _postings(db) - before
    result["release"] = {"orders": released, "postings": moved, "seconds": round(elapsed, 3),
                         "postings_per_s": round(moved / elapsed, 1)}

    started = time.perf_counter()
    with db.read() as s:
        report = ledger.verify(s)
    elapsed = time.perf_counter() - started
    result["verify"] = {"ok": report["ok"], "entries": report["entries"], "postings": _postings(db),
                        "seconds": round(elapsed, 3), "entries_per_s": round(report["entries"] / elapsed, 1)}
    db.dispose()
    return result


def _pg_database(base_url: str):
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {DB_NAME}"))
        conn.execute(text(f"CREATE DATABASE {DB_NAME}"))
    admin.dispose()
    return make_url(base_url).set(database=DB_NAME).render_as_string(hide_password=False)


def _drop_pg(base_url: str) -> None:
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)"))
    admin.dispose()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger", description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=1000, help="orders per phase (default 1000)")
    parser.add_argument("--writers", type=int, default=4, help="concurrent writers (default 4)")
    parser.add_argument("--pg", default=PG_URL, help="PostgreSQL server URL (a database on it is made and dropped)")
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    args = parser.parse_args(argv)
    figures = {"orders_per_phase": args.orders, "postings_per_order": {"settle": 7, "release": 8}}
    with tempfile.TemporaryDirectory() as tmp:
        figures["sqlite"] = run_backend(f"sqlite:///{tmp}/payout.db", args.orders, args.writers)
    if not args.no_pg:
        url = _pg_database(args.pg)
        try:
            figures["postgresql"] = run_backend(url, args.orders, args.writers)
        finally:
            _drop_pg(args.pg)
    write_result("ledger", figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
