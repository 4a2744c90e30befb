"""Delivery's own settings, on top of the kernel's ``Settings`` (design.md §9).

Only delivery holds card keys, so only delivery reads (and, in real mode, requires)
``LINKSHOP_VAULT_KEY`` and the read-only ``LINKSHOP_VAULT_PREVIOUS_KEYS`` of a rotation.
Embedded mode uses this machine's generated dev key, and says so (``generated``). Each payment
provider reads its own settings (``payments/<provider>.py``).

The buyer's e-mail (``mail.py``): ``LINKSHOP_SMTP_URL`` (``smtp://user:pass@host:port``, port
587 by default, STARTTLS when offered; ``smtps://`` for implicit TLS on 465) and
``LINKSHOP_MAIL_FROM`` (required in real mode with SMTP; embedded default
``Linkshop <no-reply@localhost>``). Embedded mode without SMTP writes each message as an .eml
file under ``<LINKSHOP_VAR_DIR or ./var>/mail/``; real mode without SMTP sends no e-mail
(``mail_note`` says which, for the start-up banner and the worker's log).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from pathlib import Path

from shared.config import VAULT_KEY, ConfigError, Settings, is_embedded, secret

from .mail import SmtpServer, parse_smtp_url
from .payments import load_providers

DEFAULT_MAIL_FROM = "Linkshop <no-reply@localhost>"


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
    # The buyer's e-mail: through ``smtp`` if set, else (embedded mode) into ``mail_dir``, else none.
    smtp: SmtpServer | None = None
    mail_from: str = DEFAULT_MAIL_FROM
    mail_dir: str | None = None
    mail_note: str = "e-mail: off"  # one line for the start-up banner: where buyers' e-mails go

    @property
    def mail_enabled(self) -> bool:
        return self.smtp is not None or self.mail_dir is not None


def load_config(settings: Settings, env=None, http=None, vault: bool = True) -> DeliveryConfig:
    """``http``: the session payment providers call their gateways with (default: a new one).
    ``vault=False``: for a process that never opens the vault and is not given its key (the
    worker opens it now: it writes the buyer's e-mail, keys included)."""
    env = os.environ if env is None else env
    generated: list[str] = []
    key = secret(VAULT_KEY, env, generated) if vault else ""
    previous = tuple(k.strip() for k in env.get("LINKSHOP_VAULT_PREVIOUS_KEYS", "").split(",") if k.strip())
    return DeliveryConfig(vault_key=key, vault_previous_keys=previous, generated=tuple(generated),
                          providers=load_providers(settings, env, http),
                          payment_query_after_s=float(env.get("LINKSHOP_PAYMENT_QUERY_AFTER_S", 120)),
                          payment_query_every_s=float(env.get("LINKSHOP_PAYMENT_QUERY_EVERY_S", 60)),
                          **mail_settings(env))


def mail_settings(env) -> dict:
    """The e-mail fields of ``DeliveryConfig`` from the environment."""
    embedded = is_embedded(env)
    url = (env.get("LINKSHOP_SMTP_URL") or "").strip()
    sender = (env.get("LINKSHOP_MAIL_FROM") or "").strip()
    if url:
        smtp = parse_smtp_url(url)
        if not sender and not embedded:
            raise ConfigError("LINKSHOP_MAIL_FROM must be set in real mode when LINKSHOP_SMTP_URL is")
        return {"smtp": smtp, "mail_from": sender or DEFAULT_MAIL_FROM, "mail_dir": None,
                "mail_note": f"e-mail: sent through {smtp.where()} as {sender or DEFAULT_MAIL_FROM}"}
    if embedded:
        var_dir = env.get("LINKSHOP_VAR_DIR") or "var"
        return {"smtp": None, "mail_from": sender or DEFAULT_MAIL_FROM, "mail_dir": str(Path(var_dir) / "mail"),
                "mail_note": f"e-mail: written to {Path(var_dir) / 'mail'}/ (no LINKSHOP_SMTP_URL)"}
    return {"smtp": None, "mail_from": sender or DEFAULT_MAIL_FROM, "mail_dir": None,
            "mail_note": "e-mail: off (no LINKSHOP_SMTP_URL): buyers get no e-mail"}
