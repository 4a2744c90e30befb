"""Delivery's own settings, on top of the kernel's ``Settings`` (design.md §9).

Only delivery holds card keys, so only delivery reads (and, in real mode, requires)
``LINKSHOP_VAULT_KEY`` and the read-only ``LINKSHOP_VAULT_PREVIOUS_KEYS`` of a rotation.
Embedded mode uses this machine's generated dev key, and says so (``generated``). Each payment
provider reads its own settings (``payments/<provider>.py``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from shared.config import VAULT_KEY, Settings, secret

from .payments import load_providers


@dataclass(frozen=True)
class DeliveryConfig:
    vault_key: str
    vault_previous_keys: tuple[str, ...] = ()
    generated: tuple[str, ...] = field(default=())
    # The enabled payment providers by name, the operator's preferred first (payments.load_providers).
    providers: dict = field(default_factory=dict)
    # 掉单: a pending order is asked about this long after it was created, then every so often.
    payment_query_after_s: float = 120.0
    payment_query_every_s: float = 60.0


def load_config(settings: Settings, env=None, http=None, vault: bool = True) -> DeliveryConfig:
    """``http``: the session payment providers call their gateways with (default: a new one).
    ``vault=False``: for the worker, which never opens the vault and is not given its key."""
    env = os.environ if env is None else env
    generated: list[str] = []
    key = secret(VAULT_KEY, env, generated) if vault else ""
    previous = tuple(k.strip() for k in env.get("LINKSHOP_VAULT_PREVIOUS_KEYS", "").split(",") if k.strip())
    return DeliveryConfig(vault_key=key, vault_previous_keys=previous, generated=tuple(generated),
                          providers=load_providers(settings, env, http),
                          payment_query_after_s=float(env.get("LINKSHOP_PAYMENT_QUERY_AFTER_S", 120)),
                          payment_query_every_s=float(env.get("LINKSHOP_PAYMENT_QUERY_EVERY_S", 60)))
