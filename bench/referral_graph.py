"""Referral graph at scale: 1,000,000 users, chains up to 50 deep, on PostgreSQL.

Resolving an order's upline reads one row (the ancestor path), so it stays in the
milliseconds whatever the size of the graph; the cycle check of a rebind reads the same row.
Run: ``python -m bench.referral_graph [--users N] [--depth D]`` (``make bench`` runs it).
"""
from __future__ import annotations

import argparse
import os
import random
import time
from datetime import datetime, timezone

import psycopg

from bench.common import percentile, write_result

ADMIN_DSN = os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
DB_NAME = "linkshop_bench_referral"


def build(users: int, max_depth: int, seed: int) -> str:
    """Create a fresh database holding the referral schema and a random forest of users."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME}")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    url = ADMIN_DSN.rsplit("/", 1)[0] + "/" + DB_NAME
    from services.manage import upgrade
    upgrade("referral", url.replace("postgresql://", "postgresql+psycopg://"))
    rng = random.Random(seed)
    paths, depths = [], []
    now = datetime.now(timezone.utc)
    started = time.perf_counter()
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy("COPY users (id, email, email_hash, invite_code, parent_id, path, depth, bound_at, created_at)"
                      " FROM STDIN") as copy:
            for i in range(users):
                uid = f"usr_{i:016x}"
                parent = None
                if i and rng.random() < 0.97:
                    # mostly extend a recent chain (deep lines), sometimes join anywhere
                    candidate = i - 1 if rng.random() < 0.6 else rng.randrange(i)
                    if depths[candidate] < max_depth:
                        parent = candidate
                if parent is None:
                    path, depth = "/", 0
                else:
                    path, depth = f"{paths[parent]}usr_{parent:016x}/", depths[parent] + 1
                paths.append(path)
                depths.append(depth)
                copy.write_row((uid, f"{uid}@example.com", f"{i:064x}", f"C{i:09d}",
                                f"usr_{parent:016x}" if parent is not None else None, path, depth,
                                now if parent is not None else None, now))
        conn.commit()
        cur.execute("ANALYZE users")
        conn.commit()
    print(f"built {users} users in {time.perf_counter() - started:.1f}s; deepest {max(depths)}")
    return url.replace("postgresql://", "postgresql+psycopg://"), depths


def measure(url: str, depths: list[int], samples: int, seed: int) -> dict:
    from services.referral import domain
    from services.referral.models import Base, User
    from shared.db import Database

    db = Database(url, Base.metadata)
    rng = random.Random(seed + 1)
    deep = [i for i, d in enumerate(depths) if d >= 45]
    any_user = range(len(depths))

    def timed(fn, ids):
        out = []
        for i in ids:
            t = time.perf_counter()
            fn(i)
            out.append((time.perf_counter() - t) * 1000)
        return out

    def chain(i):
        with db.read() as s:
            source, upline = domain.resolve_chain(s, f"usr_{i:016x}", None)
            assert len(upline) == depths[i]

    def cycle_check(i):
        with db.read() as s:
            user = s.get(User, f"usr_{i:016x}")
            # what a rebind checks: is the would-be parent inside the mover's own team?
            assert user.id not in domain.ancestors(user) and len(domain.ancestors(user)) == depths[i]

    def team(i):
        with db.read() as s:
            domain.team_summary(s, s.get(User, f"usr_{i:016x}"), datetime.now(timezone.utc))

    chain(deep[0])  # warm the pool
    deep_ms = timed(chain, rng.sample(deep, min(samples, len(deep))))
    any_ms = timed(chain, rng.sample(any_user, samples))
    cycle_ms = timed(cycle_check, rng.sample(deep, min(samples, len(deep))))
    mid = [i for i, d in enumerate(depths) if d == 40]
    team_ms = timed(team, rng.sample(mid, min(50, len(mid))))
    db.dispose()
    summary = lambda v: {"p50_ms": round(percentile(v, 50), 3), "p99_ms": round(percentile(v, 99), 3),
                         "max_ms": round(max(v), 3), "samples": len(v)}
    return {"upline_depth_45_plus": summary(deep_ms), "upline_random_user": summary(any_ms),
            "rebind_cycle_check": summary(cycle_ms), "team_summary_depth_40": summary(team_ms)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    args = parser.parse_args()
    url, depths = build(args.users, args.depth, args.seed)
    figures = measure(url, depths, args.samples, args.seed)
    figures.update(users=args.users, max_depth=max(depths),
                   users_at_depth_50=sum(1 for d in depths if d == args.depth),
                   mean_depth=round(sum(depths) / len(depths), 1), backend="postgresql")
    write_result("referral-graph", figures)
    if not args.keep:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")


if __name__ == "__main__":
    main()
