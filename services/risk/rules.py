"""The rule engine's catalogue: every rule's name, stage, score and parameters.

The defaults live here; the operator's changes live in the ``rules`` table and win
(``PUT /risk/v1/rules/<name>``, no redeploy). A rule that fires gives a ``Hit`` (its score
and a reason a person can read); a stage's decision comes from the sum of the scores against
the thresholds of the ``decision`` rule, except that a hard block rejects whatever the sum.

The defaults are tuned on ``bench/risk_stream.py`` (see its results for the figures).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.errors import Invalid

from .models import RuleSetting

DAY = 86400
# Throwaway mailbox services: where card testers get a fresh address per stolen card. The
# operator extends the list through the rule's ``domains`` parameter; subdomains count too.
DISPOSABLE_DOMAINS = (
    "10minutemail.com", "20minutemail.com", "discard.email", "dispostable.com", "emailondeck.com",
    "fakeinbox.com", "getairmail.com", "getnada.com", "guerrillamail.com", "guerrillamail.net",
    "guerrillamailblock.com", "mailcatch.com", "maildrop.cc", "mailinator.com", "mailnesia.com",
    "mintemail.com", "mohmal.com", "mytemp.email", "sharklasers.com", "spamgourmet.com", "temp-mail.org",
    "tempail.com", "tempmail.com", "tempmailo.com", "throwawaymail.com", "trashmail.com", "yopmail.com",
    "yopmail.net",
)


@dataclass(frozen=True)
class RuleSpec:
    name: str
    stage: str  # order | commission | withdrawal | decision
    description: str
    score: int
    params: dict = field(default_factory=dict)
    hard: bool = False


SPECS: dict[str, RuleSpec] = {spec.name: spec for spec in (
    RuleSpec("decision", "decision",
             "Thresholds on the total score: at review_at an order or withdrawal waits for the operator, "
             "at reject_at it is refused.", 0, {"review_at": 50, "reject_at": 100}),
    # -- orders, when delivery announces them ----------------------------------------------
    RuleSpec("blocklist", "order",
             "The email, its domain, the IP (or a network holding it) or the device is on the blocklist: "
             "a hard block.", 100, hard=True),
    RuleSpec("velocity_ip", "order",
             "More than `limit` orders from one IP within `window_s` (high: offices and carrier NAT share IPs).",
             50, {"window_s": 3600, "limit": 20}),
    RuleSpec("velocity_device", "order",
             "More than `limit` orders from one device within `window_s`.", 50, {"window_s": 3600, "limit": 10}),
    RuleSpec("velocity_email", "order",
             "More than `limit` orders from one (normalised) email within `window_s`.", 50,
             {"window_s": 3600, "limit": 10}),
    RuleSpec("velocity_payer", "order",
             "A payment account this device or email paid with has paid more than `limit` orders within "
             "`window_s` (the account of the order itself is known only once it is paid).", 50,
             {"window_s": DAY, "limit": 25}),
    RuleSpec("card_testing", "order",
             "Card testing and stock-locking from one source (device, email or IP) within `window_s`: at "
             "least `min_orders` orders of which `unpaid_share` are unpaid; or `max_open` unpaid "
             "reservations at once (within `open_window_s`); or `max_payers` different payment accounts; "
             "or `max_open_keys` keys held in two or more unpaid reservations. An IP's counts of open "
             "reservations, keys and payment accounts may be `ip_factor` times higher (many people behind "
             "one NAT); its unpaid share may not, since a share does not grow with the crowd.", 100,
             {"window_s": 3600, "min_orders": 3, "unpaid_share": 0.75, "open_window_s": 900,
              "max_open": 3, "max_open_keys": 20, "max_payers": 3, "ip_factor": 2}),
    RuleSpec("product_burst", "order",
             "A bot that changes device, email and IP every time still aims at one product: a source never "
             "seen before orders a product that had at least `min_unpaid` unpaid orders within `window_s`, "
             "`unpaid_share` of all its orders there. A contributing signal, not a decision on its own: "
             "an honest flash sale looks the same (hundreds of first-time buyers holding reservations).",
             30, {"window_s": 900, "min_unpaid": 8, "unpaid_share": 0.75}),
    RuleSpec("burst_shared_ip", "order",
             "During a product burst (see product_burst), a new identity on an IP that already holds an "
             "unpaid order of the same product within product_burst's window: the bot changed its device "
             "and email, not its proxy. A contributing signal, reaching review together with product_burst.",
             20),
    RuleSpec("disposable_email", "order",
             "The email is at a throwaway mailbox service (one of `domains`, or a subdomain of one). A "
             "contributing signal: alone it does not reach review, with recent_unpaid or a burst it does.",
             25, {"domains": list(DISPOSABLE_DOMAINS)}),
    RuleSpec("recent_unpaid", "order",
             "An earlier order from this device or IP, under another email, within `window_s` is still "
             "unpaid: a card tester's next card under a fresh mailbox (an honest buyer trying again keeps "
             "their email; a neighbour behind the same NAT looks alike, hence only a contributing signal).",
             25, {"window_s": 900}),
    RuleSpec("first_order_amount", "order",
             "A source never seen before orders at least `factor` times the product's usual order amount "
             "(its running mean once `min_history` orders are seen, else its price), and at least "
             "`min_amount_cents`. A contributing signal: alone it does not reach review.", 20,
             {"factor": 4.0, "min_history": 10, "min_amount_cents": 5000}),
    RuleSpec("max_quantity_fresh", "order",
             "A source never seen before orders the product's per-order maximum (when that maximum is at "
             "least `min_max`). A contributing signal: alone, or with first_order_amount, it does not "
             "reach review.", 20, {"min_max": 2}),
    # -- commission lines, when referral accrues them ---------------------------------------
    RuleSpec("self_referral", "commission",
             "The buyer shares a device, payment account or normalised email with a user earning on the order; "
             "or an IP, when that IP is quiet (at most `ip_max_devices` devices seen on it within "
             "`ip_lookback_s`: a home, not an office or a carrier NAT). The line is held for review.", 100,
             {"use_ip": True, "ip_max_devices": 3, "ip_lookback_s": 30 * DAY}),
    RuleSpec("ring", "commission",
             "Two users who each earned on at least `min_each_way` orders bought by the other (levels up "
             "to `max_level`). Their lines are held for review.", 100, {"min_each_way": 2, "max_level": 1}),
    # -- withdrawals, when payout asks ------------------------------------------------------
    RuleSpec("withdrawal_new_account", "withdrawal",
             "The account was registered less than `min_age_s` before the withdrawal.", 30, {"min_age_s": 30 * DAY}),
    RuleSpec("withdrawal_fast", "withdrawal",
             "At least `share` of the amount is covered by commission accrued within `window_s` before "
             "the withdrawal (default: the 7-day hold plus a day, i.e. withdrawn the moment it is released).",
             30, {"window_s": 8 * DAY, "share": 0.8}),
    RuleSpec("withdrawal_tainted", "withdrawal",
             "At least `share` of the user's earnings come from flagged lines or refunded orders.", 60,
             {"share": 0.5}),
    RuleSpec("withdrawal_shared_destination", "withdrawal",
             "The payout destination was used by `min_other_owners` other accounts.", 60, {"min_other_owners": 1}),
)}


@dataclass(frozen=True)
class Hit:
    rule: str
    score: int
    reason: str
    hard: bool = False

    def view(self) -> dict:
        return {"rule": self.rule, "score": self.score, "reason": self.reason, **({"hard": True} if self.hard else {})}


@dataclass(frozen=True)
class Rule:
    """A rule as it runs now: its spec merged with the operator's settings."""
    spec: RuleSpec
    enabled: bool
    score: int
    params: dict

    @property
    def name(self) -> str:
        return self.spec.name

    def hit(self, reason: str) -> Hit:
        return Hit(self.name, self.score, reason, self.spec.hard)


class RuleBook:
    """Every rule as configured in this transaction: one query, then lookups."""

    def __init__(self, session: Session | None, rows=None):
        """``rows``: the settings already read (objects with name, enabled, score, params)."""
        if rows is None:
            rows = session.scalars(select(RuleSetting))
        rows = {row.name: row for row in rows}
        self.rules: dict[str, Rule] = {}
        for name, spec in SPECS.items():
            row = rows.get(name)
            if row is None:
                self.rules[name] = Rule(spec, True, spec.score, dict(spec.params))
            else:  # a parameter added since the row was written runs on its default
                self.rules[name] = Rule(spec, row.enabled, row.score, {**spec.params, **(row.params or {})})

    def get(self, name: str) -> Rule | None:
        rule = self.rules[name]
        return rule if rule.enabled else None

    def thresholds(self) -> tuple[int, int]:
        p = self.rules["decision"].params
        return p["review_at"], p["reject_at"]

    def decide(self, hits: list[Hit]) -> tuple[str, int]:
        score = sum(h.score for h in hits)
        review_at, reject_at = self.thresholds()
        if any(h.hard for h in hits) or score >= reject_at:
            return "reject", score
        if score >= review_at:
            return "review", score
        return "approve", score


_settings = RuleSetting.__table__
# Built once: a statement object reused is compiled once and its cache key is memoised.
_SETTINGS = select(_settings.c.name, _settings.c.enabled, _settings.c.score, _settings.c.params) \
    .order_by(_settings.c.name)
_last_book: tuple[list, RuleBook] | None = None


def rule_book(session: Session) -> RuleBook:
    """``RuleBook(session)``, reused while the ``rules`` table holds exactly the same settings.

    The settings are read in every call (one small Core query, no ORM objects) and compared
    in full with those the last book was built from: an operator's ``PUT /risk/v1/rules/<name>``
    is seen by the very next event, as before. A book is never changed once built."""
    global _last_book
    if session.autoflush:  # what an ORM query would do first
        session.flush()
    rows = session.connection().execute(_SETTINGS).all()
    key = [tuple(row) for row in rows]
    last = _last_book
    if last is not None and last[0] == key:
        return last[1]
    book = RuleBook(None, rows)
    _last_book = (key, book)
    return book


def validate_params(spec: RuleSpec, params: dict) -> dict:
    """Field errors for params that are unknown or of the wrong type; {} when all are fine."""
    errors: dict[str, list[str]] = {}
    for key, value in params.items():
        if key not in spec.params:
            errors[key] = [f"unknown parameter of {spec.name}"]
            continue
        default = spec.params[key]
        if isinstance(default, list):
            ok = isinstance(value, list) and len(value) <= 5000 and all(
                isinstance(v, str) and 0 < len(v.strip()) <= 253 for v in value)
            kind = "a list of up to 5000 non-empty strings"
        elif isinstance(default, bool):
            ok = isinstance(value, bool)
            kind = "a boolean"
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            kind = "a non-negative integer"
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
            kind = "a non-negative number"
        if not ok:
            errors[key] = [f"must be {kind}"]
    if spec.name == "decision" and not errors:
        merged = {**spec.params, **params}
        if merged["review_at"] > merged["reject_at"]:
            errors["review_at"] = ["must not exceed reject_at"]
    for key in ("unpaid_share", "share"):
        if key in params and key not in errors and params[key] > 1:
            errors[key] = ["must be between 0 and 1"]
    return errors


def update_setting(session: Session, spec: RuleSpec, changes: dict, now: datetime) -> RuleSetting:
    """The operator changes a rule's switch, score or parameters; those not given keep their value."""
    errors = validate_params(spec, changes.get("params", {}))
    if errors:
        raise Invalid("the request has invalid fields", {"params": errors})
    if spec.stage == "decision" and changes.get("enabled") is False:
        raise Invalid("the decision thresholds cannot be switched off", {"enabled": ["must stay true"]})
    current = RuleBook(session).rules[spec.name]
    row = session.get(RuleSetting, spec.name, with_for_update=True)
    if row is None:
        row = RuleSetting(name=spec.name)
        session.add(row)
    row.enabled = changes.get("enabled", current.enabled)
    row.score = changes.get("score", current.score)
    row.params = {**current.params, **changes.get("params", {})}
    row.updated_at = now
    session.flush()
    return row
