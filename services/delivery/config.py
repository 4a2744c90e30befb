"""Delivery's own settings, on top of the kernel's ``Settings`` (design.md §9).

Only delivery holds card keys, so only delivery reads (and, in real mode, requires)
``LINKSHOP_VAULT_KEY`` and the read-only ``LINKSHOP_VAULT_PREVIOUS_KEYS`` of a rotation.
Embedded mode uses this machine's generated dev key, and says so (``generated``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from shared.config import VAULT_KEY, Settings, secret


@dataclass(frozen=True)
class DeliveryConfig:
    vault_key: str
    vault_previous_keys: tuple[str, ...] = ()
    generated: tuple[str, ...] = field(default=())


def load_config(settings: Settings, env=None) -> DeliveryConfig:
    env = os.environ if env is None else env
    generated: list[str] = []
    key = secret(VAULT_KEY, env, generated)
    previous = tuple(k.strip() for k in env.get("LINKSHOP_VAULT_PREVIOUS_KEYS", "").split(",") if k.strip())
    return DeliveryConfig(vault_key=key, vault_previous_keys=previous, generated=tuple(generated))
