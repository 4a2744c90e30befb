"""Payout's own settings, on top of the kernel's ``Settings`` (design.md §7, §9).

The kernel's ``Settings`` is shared by every service and does not carry the raw environment,
so payout reads its own variables from ``os.environ`` (or the mapping it is given).

How withdrawals leave (``LINKSHOP_PAYOUT_METHOD``):

- ``sandbox``: paid at once with pretend money; only where the sandbox is on (embedded mode,
  or ``LINKSHOP_SANDBOX_SECRET`` with ``LINKSHOP_SANDBOX_ENABLED``), and the default there.
- ``alipay``: the worker sends each approved withdrawal by Alipay's transfer API, with the
  settings delivery's Alipay payments use (one Secret for both), all or none:
  ``LINKSHOP_ALIPAY_GATEWAY``, ``LINKSHOP_ALIPAY_APP_ID``, ``LINKSHOP_ALIPAY_PRIVATE_KEY``,
  ``LINKSHOP_ALIPAY_PUBLIC_KEY``, given to the worker alone. Chosen by name only, never
  because the keys are there: the API (without them) must agree with the worker.
- ``export``: the operator downloads a batch file and marks each withdrawal paid or failed.
  The default without the sandbox.

Production never falls back to the sandbox: ``sandbox`` without it, or ``alipay`` without its
settings, refuses to start.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from shared.alipay import AlipaySettings, settings_from_env
from shared.config import ConfigError, Settings

PAYOUT_METHODS = ("sandbox", "alipay", "export")


@dataclass(frozen=True)
class PayoutConfig:
    hold_seconds: int
    refund_window_seconds: int
    withdrawal_fee_bps: int = 100
    withdrawal_min_fee_cents: int = 100
    withdrawal_min_cents: int = 1000
    withdrawal_max_cents: int = 100_000_000
    auto_approve_cents: int = 50_000
    risk_required: bool = False
    currency: str = "CNY"
    clearing_provider: str = "sandbox"
    payout_method: str = "sandbox"  # sandbox | alipay | export (PAYOUT_METHODS)
    alipay: AlipaySettings | None = None  # set when payout_method is alipay
    release_interval_s: float = 5.0
    release_batch: int = 200

    def withdrawal_fee(self, amount_cents: int) -> int:
        return max(self.withdrawal_min_fee_cents, amount_cents * self.withdrawal_fee_bps // 10000)


def _int(env, name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    try:
        value = default if raw in (None, "") else int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}")
    return value


def _payout_method(settings: Settings, env, alipay: AlipaySettings | None, transfer_keys: bool) -> str:
    """Alipay transfers are chosen by name, never inferred from keys being there: the API,
    which is not given the keys, must agree with the worker on the method."""
    sandbox = settings.sandbox_secret is not None
    method = (env.get("LINKSHOP_PAYOUT_METHOD") or "").strip().lower()
    if not method:
        return "sandbox" if sandbox else "export"
    if method not in PAYOUT_METHODS:
        raise ConfigError(f"LINKSHOP_PAYOUT_METHOD must be one of {', '.join(PAYOUT_METHODS)}, not {method!r}")
    if method == "sandbox" and not sandbox:
        raise ConfigError("LINKSHOP_PAYOUT_METHOD=sandbox pays nobody: it needs the sandbox (embedded mode or "
                          "LINKSHOP_SANDBOX_ENABLED); choose alipay or export")
    if method == "alipay" and alipay is None and transfer_keys:
        raise ConfigError("LINKSHOP_PAYOUT_METHOD=alipay needs LINKSHOP_ALIPAY_GATEWAY, LINKSHOP_ALIPAY_APP_ID, "
                          "LINKSHOP_ALIPAY_PRIVATE_KEY and LINKSHOP_ALIPAY_PUBLIC_KEY")
    return method


def load_config(settings: Settings, env=None, transfer_keys: bool = True) -> PayoutConfig:
    """Refuses to start (``ConfigError``) when the hold is shorter than the refund window:
    money released before the buyer can no longer refund is money that may have to be
    clawed back from an account that already paid it out. ``transfer_keys=False``: for the
    API, which sends no transfer and is not given Alipay's keys (the worker is)."""
    env = os.environ if env is None else env
    hold = settings.hold_seconds
    if hold < 0:
        raise ConfigError("LINKSHOP_HOLD_SECONDS must not be negative")
    window = _int(env, "LINKSHOP_REFUND_WINDOW_SECONDS", hold)
    if hold < window:
        raise ConfigError(f"LINKSHOP_HOLD_SECONDS ({hold}) is shorter than LINKSHOP_REFUND_WINDOW_SECONDS "
                          f"({window}): balances would become available while the order can still be refunded")
    fee_bps = _int(env, "LINKSHOP_WITHDRAWAL_FEE_BPS", 100)
    if fee_bps > 10000:
        raise ConfigError("LINKSHOP_WITHDRAWAL_FEE_BPS must be at most 10000")
    currency = env.get("LINKSHOP_LEDGER_CURRENCY", "CNY").strip().upper()
    if len(currency) != 3 or not currency.isalpha():
        raise ConfigError("LINKSHOP_LEDGER_CURRENCY must be a 3-letter currency code")
    try:
        interval = float(env.get("LINKSHOP_RELEASE_INTERVAL_S", 5.0))
    except ValueError:
        raise ConfigError("LINKSHOP_RELEASE_INTERVAL_S must be a number") from None
    alipay = settings_from_env(env) if transfer_keys else None
    method = _payout_method(settings, env, alipay, transfer_keys)
    return PayoutConfig(
        hold_seconds=hold,
        refund_window_seconds=window,
        withdrawal_fee_bps=fee_bps,
        withdrawal_min_fee_cents=_int(env, "LINKSHOP_WITHDRAWAL_MIN_FEE_CENTS", 100),
        withdrawal_min_cents=_int(env, "LINKSHOP_WITHDRAWAL_MIN_CENTS", 1000, minimum=1),
        withdrawal_max_cents=_int(env, "LINKSHOP_WITHDRAWAL_MAX_CENTS", 100_000_000, minimum=1),
        auto_approve_cents=_int(env, "LINKSHOP_WITHDRAWAL_AUTO_APPROVE_CENTS", 50_000),
        risk_required=settings.risk_required,
        currency=currency,
        payout_method=method,
        alipay=alipay if method == "alipay" else None,
        release_interval_s=interval,
    )
