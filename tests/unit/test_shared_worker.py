"""shared.worker: the embedded hub relays and consumes until quiet; periodic jobs run when due
and a failing job does not stop the others."""
import pytest

from shared.worker import EmbeddedHub, Job, WorkerSpec, run_due_jobs
from tests.kit import create_merchant, outbox_events


def test_drain_relays_and_consumes_until_quiet(embedded, catalog):
    create_merchant(catalog)
    assert embedded.bus.pending("delivery") == 0  # nothing moves until the hub runs
    embedded.hub.drain()
    assert all(embedded.bus.pending(s) == 0 for s in embedded.settings)
    [event] = outbox_events(embedded, "catalog", "catalog.merchant.upserted")
    embedded.hub.drain()  # idempotent when quiet


def test_drain_gives_up_when_events_keep_flowing(embedded):
    hub = EmbeddedHub([], embedded.bus)
    hub.pump = lambda: 1
    with pytest.raises(RuntimeError):
        hub.drain(max_rounds=5)


def test_due_jobs_run_and_a_failing_job_does_not_stop_the_rest():
    ran = []

    def boom():
        ran.append("boom")
        raise RuntimeError("job failed")

    spec = WorkerSpec("catalog", None, None, None, None,
                      jobs=[Job("boom", 10, boom), Job("ok", 10, lambda: ran.append("ok"))])
    run_due_jobs(spec, now=100.0)
    assert ran == ["boom", "ok"]
    run_due_jobs(spec, now=105.0)  # not due yet
    assert ran == ["boom", "ok"]
    run_due_jobs(spec, now=110.0)
    assert ran == ["boom", "ok", "boom", "ok"]


def test_every_embedded_worker_prunes_its_outbox_and_inbox(embedded, catalog):
    from datetime import timedelta

    from sqlalchemy import func, select, update

    from shared.events import utcnow
    create_merchant(catalog)
    embedded.hub.drain()
    spec = next(s for s in embedded.hub.specs if s.service == "catalog")
    job = next(j for j in spec.jobs if j.name == "prune_outbox_and_inbox")
    delivery = next(s for s in embedded.hub.specs if s.service == "delivery")
    assert any(j.name == "prune_outbox_and_inbox" for j in delivery.jobs)
    with spec.db.write() as s:  # the merchant event went out two days ago
        s.execute(update(spec.outbox.table).values(sent_at=utcnow() - timedelta(days=2)))
    job.run()
    with spec.db.read() as s:
        assert s.scalar(select(func.count()).select_from(spec.outbox.table)) == 0
    with delivery.db.read() as s:  # delivery's inbox ids are recent: kept (the merchant event)
        assert s.scalar(select(func.count()).select_from(delivery.inbox)) == 1
