"""Writes the Grafana dashboards in this folder (overview.json and one per service).

    python deploy/grafana/build.py          # rewrite the JSON files
    python deploy/grafana/build.py --check  # exit 1 if a file differs (tests/deploy runs this)

The JSON files are what Grafana imports (or a provisioning sidecar loads); edit this script,
not them. Every query uses only metrics from shared/metrics.py, Prometheus' `up`, and
RabbitMQ's per-object `rabbitmq_queue_messages` (docs/operations.md#metrics).
Each dashboard has a data-source and a namespace variable, so one Grafana can show dev and prod.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVICES = ("catalog", "delivery", "referral", "payout", "risk")
DS = {"type": "prometheus", "uid": "${datasource}"}
NS = 'namespace=~"$namespace"'
DEAD_QUEUES = "~.+\\\\.dead"  # PromQL string ".+\\.dead": the regex .+\.dead


def sel(metric: str, **labels: str) -> str:
    """metric{namespace=~"$namespace",label="value",...}; a value starting with ~ is a regex.

    RabbitMQ's metrics come from the broker, usually in a namespace of its own: no filter there.
    """
    parts = [] if metric.startswith("rabbitmq_") else [NS]
    for name, value in labels.items():
        parts.append(f'{name}=~"{value[1:]}"' if value.startswith("~") else f'{name}="{value}"')
    return f"{metric}{{{','.join(parts)}}}"


class Board:
    def __init__(self, uid: str, title: str, description: str):
        self.uid, self.title, self.description = uid, title, description
        self.panels: list[dict] = []
        self.y = 0
        self.x = 0
        self.row_h = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"id": len(self.panels) + 1, "type": "row", "title": title, "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_h
            self.x, self.row_h = 0, 0

    def _place(self, w: int, h: int) -> dict:
        if self.x + w > 24:
            self._newline()
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def timeseries(self, title: str, targets: list[tuple[str, str]], unit: str = "short",
                   description: str = "", w: int = 12, h: int = 8, stack: bool = False,
                   threshold: float | None = None) -> None:
        defaults: dict = {"unit": unit, "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                                                   "showPoints": "never",
                                                   "stacking": {"mode": "normal" if stack else "none", "group": "A"}}}
        if threshold is not None:
            defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": "green", "value": None},
                                                                      {"color": "red", "value": threshold}]}
            defaults["custom"]["thresholdsStyle"] = {"mode": "line"}
        self.panels.append({
            "id": len(self.panels) + 1, "type": "timeseries", "title": title, "description": description,
            "datasource": DS, "gridPos": self._place(w, h),
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
            "targets": [{"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend}
                        for i, (expr, legend) in enumerate(targets)],
        })

    def stat(self, title: str, expr: str, unit: str = "short", description: str = "",
             red_above: float | None = 0, w: int = 6, h: int = 4, legend: str = "") -> None:
        steps = [{"color": "green", "value": None}]
        if red_above is not None:
            steps.append({"color": "red", "value": red_above + (1e-9 if red_above == 0 else 0)})
        self.panels.append({
            "id": len(self.panels) + 1, "type": "stat", "title": title, "description": description,
            "datasource": DS, "gridPos": self._place(w, h),
            "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
                            "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "background", "graphMode": "area", "textMode": "auto"},
            "targets": [{"refId": "A", "datasource": DS, "expr": expr, "legendFormat": legend}],
        })

    def json(self) -> dict:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["linkshop"],
            "timezone": "browser",
            "editable": True,
            "graphTooltip": 1,
            "schemaVersion": 39,
            "version": 1,
            "refresh": "30s",
            "time": {"from": "now-6h", "to": "now"},
            "annotations": {"list": []},
            "links": [{"type": "dashboards", "tags": ["linkshop"], "asDropdown": True, "title": "Linkshop",
                       "includeVars": True, "keepTime": True}],
            "templating": {"list": [
                {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
                 "current": {}, "hide": 0, "refresh": 1, "options": []},
                {"name": "namespace", "label": "Namespace", "type": "query", "datasource": DS,
                 "query": {"query": 'label_values(up{job="linkshop"}, namespace)', "refId": "namespace"},
                 "definition": 'label_values(up{job="linkshop"}, namespace)',
                 "includeAll": True, "allValue": ".*", "multi": True, "current": {}, "hide": 0,
                 "refresh": 2, "sort": 1, "options": []},
            ]},
            "panels": self.panels,
        }


def rate(metric: str, window: str = "$__rate_interval", **labels: str) -> str:
    return f"rate({sel(metric, **labels)}[{window}])"


# Paid -> delivered as the buyer waits for it: at payment, or at risk's automatic decision.
BUYER_WAIT = "~payment|risk"
# Payment notices refused (the rest were taken: applied, replayed, not a payment...).
REFUSED_NOTICES = "~bad_signature|bad_notice|unknown_order|wrong_provider|amount_mismatch"


def quantile(q: float, metric: str, by: str, **labels: str) -> str:
    by = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({by}) ({rate(metric + '_bucket', **labels)}))"


def overview() -> Board:
    b = Board("linkshop-overview", "Linkshop / Overview",
              "Orders, delivery latency, money, stock, errors and event lag across all five services.")
    b.row("Health")
    b.stat("Targets up", f'sum({sel("up", job="linkshop")})', red_above=None,
           description="API and worker pods Prometheus can scrape.")
    b.stat("Ledger imbalance", f'max(abs({sel("linkshop_ledger_imbalance_cents")}))', unit="none",
           description="Sum of all ledger postings in cents; must be 0 (alert LinkshopLedgerImbalance).")
    b.stat("Dead letters", f'sum({sel("rabbitmq_queue_messages", queue=DEAD_QUEUES)}) or vector(0)',
           description="Messages in every <service>.dead queue (alert LinkshopDeadLetters).")
    b.stat("Refused payment notices (1h)",
           f'sum(increase({sel("linkshop_payment_notices_total", outcome=REFUSED_NOTICES)}[1h])) or vector(0)',
           red_above=50)
    b.row("Orders and money")
    b.timeseries("Orders per minute by status",
                 [(f"sum by (status) ({rate('linkshop_orders_total')}) * 60", "{{status}}")], unit="short")
    b.timeseries("Paid → delivered latency",
                 [(quantile(0.5, "linkshop_delivery_latency_seconds", "", waited_for=BUYER_WAIT), "p50"),
                  (quantile(0.95, "linkshop_delivery_latency_seconds", "", waited_for=BUYER_WAIT), "p95"),
                  (quantile(0.99, "linkshop_delivery_latency_seconds", "", waited_for=BUYER_WAIT), "p99")],
                 unit="s", threshold=1, description="Target: p99 under 1 s (alert LinkshopDeliveryLatencyHigh). "
                                                    "Deliveries that waited for an operator's review or a "
                                                    "restock are left out.")
    b.timeseries("Revenue per hour",
                 [(f'sum by (currency) (increase({sel("linkshop_revenue_cents_total")}[1h])) / 100', "{{currency}}")],
                 unit="none",
                 description="Paid amount of delivered orders. Needs linkshop_revenue_cents_total "
                             "(docs/operations.md#metrics-the-services-still-owe).")
    b.timeseries("Commission accrued per hour by level",
                 [(f'sum by (level) (increase({sel("linkshop_commission_cents_total")}[1h])) / 100', "level {{level}}")],
                 unit="none", stack=True)
    b.timeseries("Lowest stock (10 products)",
                 [(f'bottomk(10, max by (product) ({sel("linkshop_stock_available")}))', "{{product}}")],
                 unit="short", threshold=10, description="Keys available; the alert fires under 10.")
    b.row("Errors and events")
    b.timeseries("5xx ratio by service",
                 [(f'sum by (service) ({rate("linkshop_http_requests_total", status="~5..")})'
                   f' / sum by (service) ({rate("linkshop_http_requests_total")})', "{{service}}")],
                 unit="percentunit", threshold=0.05)
    b.timeseries("Event lag p95 by service",
                 [(quantile(0.95, "linkshop_event_lag_seconds", "service"), "{{service}}")],
                 unit="s", threshold=30, description="From an event's occurrence to its handling.")
    b.timeseries("Outbox pending by service",
                 [(f'max by (service) ({sel("linkshop_outbox_pending")})', "{{service}}")], unit="short")
    b.timeseries("Requests per second by service",
                 [(f'sum by (service) ({rate("linkshop_http_requests_total")})', "{{service}}")], unit="reqps")
    return b


def service_board(svc: str) -> Board:
    b = Board(f"linkshop-{svc}", f"Linkshop / {svc}",
              f"RED per route, events, outbox and dead letters of the {svc} service.")
    b.row("Pods")
    b.stat("API pods up", f'sum({sel("up", job="linkshop", app=svc, component="api")})', red_above=None)
    b.stat("Worker pods up", f'sum({sel("up", job="linkshop", app=svc, component="worker")})', red_above=None)
    b.stat("Worker heartbeat age",
           f'time() - max({sel("linkshop_worker_heartbeat_timestamp_seconds", service=svc)})', unit="s",
           red_above=30, description="The liveness probe restarts a worker whose loops stall for 30 s.")
    b.stat("Dead letters", f'sum({sel("rabbitmq_queue_messages", queue=svc + ".dead")}) or vector(0)',
           description=f"Messages in {svc}.dead (docs/operations.md#replay-dead-letters).")
    b.row("HTTP: rate, errors, duration per route")
    b.timeseries("Requests per second by route",
                 [(f'sum by (route, method) ({rate("linkshop_http_requests_total", service=svc)})',
                   "{{method}} {{route}}")], unit="reqps")
    b.timeseries("Errors per second by route and status",
                 [(f'sum by (route, status) ({rate("linkshop_http_requests_total", service=svc, status="~[45]..")})',
                   "{{status}} {{route}}")], unit="reqps")
    b.timeseries("Duration p99 by route",
                 [(quantile(0.99, "linkshop_http_request_duration_seconds", "route", service=svc), "{{route}}")],
                 unit="s")
    b.timeseries("Duration p50 by route",
                 [(quantile(0.5, "linkshop_http_request_duration_seconds", "route", service=svc), "{{route}}")],
                 unit="s")
    b.row("Events")
    b.timeseries("Events consumed by type and outcome",
                 [(f'sum by (type, outcome) ({rate("linkshop_events_consumed_total", service=svc)})',
                   "{{type}} {{outcome}}")], unit="ops")
    b.timeseries("Events published by type",
                 [(f'sum by (type) ({rate("linkshop_events_published_total", service=svc)})', "{{type}}")],
                 unit="ops")
    b.timeseries("Event lag p95 by type",
                 [(quantile(0.95, "linkshop_event_lag_seconds", "type", service=svc), "{{type}}")],
                 unit="s", threshold=30)
    b.timeseries("Outbox pending",
                 [(f'max({sel("linkshop_outbox_pending", service=svc)})', "pending")], unit="short")
    b.timeseries("Queues: inbox and dead letters",
                 [(f'sum by (queue) ({sel("rabbitmq_queue_messages", queue=svc + ".inbox")})', "{{queue}}"),
                  (f'sum by (queue) ({sel("rabbitmq_queue_messages", queue=svc + ".dead")})', "{{queue}}")],
                 unit="short")
    if svc == "delivery":
        b.row("Delivery")
        b.timeseries("Orders per minute by status",
                     [(f"sum by (status) ({rate('linkshop_orders_total')}) * 60", "{{status}}")])
        b.timeseries("Paid → delivered latency",
                     [(quantile(0.5, "linkshop_delivery_latency_seconds", "", waited_for=BUYER_WAIT), "p50"),
                      (quantile(0.99, "linkshop_delivery_latency_seconds", "", waited_for=BUYER_WAIT), "p99")],
                     unit="s", threshold=1)
        b.timeseries("Paid → delivered after a review or a restock",
                     [(quantile(0.5, "linkshop_delivery_latency_seconds", "waited_for", waited_for="~review|stock"),
                       "p50 {{waited_for}}")], unit="s")
        b.timeseries("Payment notices per minute, by outcome",
                     [(f'sum by (provider, outcome) ({rate("linkshop_payment_notices_total")}) * 60',
                       "{{provider}} {{outcome}}")])
        b.timeseries("Refused payment notices per minute",
                     [(f'sum by (provider, outcome) ({rate("linkshop_payment_notices_total", outcome=REFUSED_NOTICES)}) * 60',
                       "{{provider}} {{outcome}}")], threshold=3)
        b.timeseries("Payments found by asking the provider (掉单), and refunds by outcome",
                     [(f'sum by (provider, outcome) ({rate("linkshop_payment_recoveries_total")}) * 60',
                       "recovered {{provider}} {{outcome}}"),
                      (f'sum by (provider, outcome) ({rate("linkshop_provider_refunds_total")}) * 60',
                       "refund {{provider}} {{outcome}}")])
        b.timeseries("Lowest stock (10 products)",
                     [(f'bottomk(10, max by (product) ({sel("linkshop_stock_available")}))', "{{product}}")],
                     threshold=10)
    elif svc == "referral":
        b.row("Referral")
        b.timeseries("Commission accrued per hour by level",
                     [(f'sum by (level) (increase({sel("linkshop_commission_cents_total")}[1h])) / 100',
                       "level {{level}}")], stack=True)
    elif svc == "payout":
        b.row("Payout")
        b.timeseries("Ledger imbalance (cents, must be 0)",
                     [(f'max({sel("linkshop_ledger_imbalance_cents")})', "imbalance")], threshold=1)
        b.timeseries("Oldest withdrawal waiting for review",
                     [(f'max({sel("linkshop_withdrawals_pending_review_oldest_seconds")})', "oldest")],
                     unit="s", threshold=4 * 3600,
                     description="Needs linkshop_withdrawals_pending_review_oldest_seconds "
                                 "(docs/operations.md#metrics-the-services-still-owe).")
    return b


def boards() -> dict[str, dict]:
    out = {"overview.json": overview().json()}
    for svc in SERVICES:
        out[f"{svc}.json"] = service_board(svc).json()
    return {name: board for name, board in out.items()}


def dump(board: dict) -> str:
    return json.dumps(board, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    stale = []
    for name, board in boards().items():
        path = HERE / name
        text = dump(board)
        if "--check" in argv:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print("out of date (run python deploy/grafana/build.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
