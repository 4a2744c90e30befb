"""The buyer's e-mail: what it says (``compose``) and how it leaves (``SmtpTransport``, or
``FileTransport`` in embedded mode without SMTP). Rules about when a mail is written, retried
or given up are ``domain``'s (``queue_mail``, ``send_mails``); the worker sends.

A message carries card keys: it is never logged, and neither is any part of it. Callers log
the order number and the outcome.
"""
from __future__ import annotations

import html
import ipaddress
import os
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from urllib.parse import unquote, urlsplit

from prometheus_client import Counter

from shared.config import ConfigError

SMTP_TIMEOUT_S = 30.0

mails_total = Counter("linkshop_mails_total", "Buyers' e-mails handed over or given up, by outcome",
                      ["kind", "outcome"])  # outcome: sent, retry, failed


class MailError(Exception):
    """The message could not be handed over; tried again later. Its text names the failure
    (an SMTP code and the server's words, a connection error), never the message."""


# -- settings --------------------------------------------------------------------------------

@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    implicit_tls: bool = False  # smtps://: TLS from the first byte; smtp://: STARTTLS when offered
    user: str | None = None
    password: str | None = None

    def __repr__(self) -> str:  # never the password
        return f"SmtpServer({self.where()!r}, user={self.user!r})"

    def where(self) -> str:
        return f"{'smtps' if self.implicit_tls else 'smtp'}://{self.host}:{self.port}"


def parse_smtp_url(url: str) -> SmtpServer:
    """``smtp://user:pass@host:port`` (port 587 by default, STARTTLS when the server offers
    it) or ``smtps://...`` (implicit TLS, port 465 by default). User and password may be
    percent-encoded."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ConfigError("LINKSHOP_SMTP_URL is not a valid smtp:// URL") from None
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ConfigError("LINKSHOP_SMTP_URL must look like smtp://user:pass@host:port (or smtps://)")
    implicit = parts.scheme == "smtps"
    return SmtpServer(host=parts.hostname, port=port or (465 if implicit else 587), implicit_tls=implicit,
                      user=unquote(parts.username) if parts.username else None,
                      password=unquote(parts.password) if parts.password is not None else None)


# -- transports ------------------------------------------------------------------------------

class SmtpTransport:
    def __init__(self, server: SmtpServer, timeout: float = SMTP_TIMEOUT_S):
        self.server, self.timeout = server, timeout

    def send(self, message: EmailMessage) -> None:
        s = self.server
        try:
            if s.implicit_tls:
                client = smtplib.SMTP_SSL(s.host, s.port, timeout=self.timeout, context=ssl.create_default_context())
            else:
                client = smtplib.SMTP(s.host, s.port, timeout=self.timeout)
            with client:
                client.ehlo()
                secure = s.implicit_tls
                if not s.implicit_tls and client.has_extn("starttls"):
                    client.starttls(context=ssl.create_default_context())
                    client.ehlo()
                    secure = True
                if s.user and client.has_extn("auth"):
                    if not secure and not _loopback(s.host):
                        # A server that offers no STARTTLS (or an attacker who stripped it)
                        # would read the password: refuse, and say so in the mail's last_error.
                        raise MailError(f"{s.host} offers no STARTTLS: the SMTP password is not sent in clear")
                    client.login(s.user, s.password or "")
                client.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = sorted({code for code, _ in exc.recipients.values()})
            raise MailError(f"recipient refused ({', '.join(map(str, codes))})") from None
        except smtplib.SMTPResponseException as exc:
            words = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
            raise MailError(f"{type(exc).__name__} {exc.smtp_code} {words}"[:300]) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise MailError(f"{type(exc).__name__}: {exc}"[:300]) from None


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class FileTransport:
    """Embedded mode without SMTP: each message is an .eml file in ``directory``, readable by
    this user only (it holds keys)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def send(self, message: EmailMessage) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            name = f"{message['X-Linkshop-Order']}-{message['X-Linkshop-Mail']}.eml"
            path = self.directory / name
            fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(bytes(message))
            os.replace(path.with_suffix(".tmp"), path)
        except OSError as exc:
            raise MailError(f"{type(exc).__name__}: {exc.strerror}") from None


# -- the message -----------------------------------------------------------------------------

TEXTS = {
    "zh-CN": {
        "delivered_subject": "订单 {order_no} 已发货：{title}",
        "replacement_subject": "订单 {order_no} 的卡密已更换：{title}",
        "hello": "您好，",
        "delivered": "您购买的「{title}」（数量 {quantity}）已发货。",
        "replacement": "您订单中「{title}」的第 {index} 个卡密已由商家更换，新的卡密如下。",
        "order_no": "订单号",
        "keys": "卡密",
        "new_key": "新卡密",
        "link_only": "请打开下面的订单链接查看卡密。",
        "instructions": "使用说明",
        "link": "订单链接",
        "keep": "此链接可查看您的卡密，请勿转发。",
    },
    "en": {
        "delivered_subject": "Order {order_no} delivered: {title}",
        "replacement_subject": "A key of order {order_no} was replaced: {title}",
        "hello": "Hello,",
        "delivered": "Your purchase of \u201c{title}\u201d (quantity {quantity}) has been delivered.",
        "replacement": "The merchant replaced key #{index} of \u201c{title}\u201d in your order; the new key is below.",
        "order_no": "Order number",
        "keys": "Keys",
        "new_key": "New key",
        "link_only": "Open the order link below to see your keys.",
        "instructions": "How to use",
        "link": "Your order",
        "keep": "This link shows your keys: do not forward this e-mail.",
    },
}


def language(locale: str | None) -> str:
    """The order's language: English when the buyer ordered in English, else Chinese (zh-CN first)."""
    return "en" if (locale or "").lower().startswith("en") else "zh-CN"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@dataclass(frozen=True)
class MailContent:
    kind: str  # "delivered" | "replacement"
    mail_id: int
    order_no: str
    to: str
    locale: str | None
    title: str
    quantity: int
    instructions: str
    link: str
    keys: list[str] | None  # None: link-only (the merchant's choice)
    key_index: int | None = None  # replacement: which key (1-based)

    def __repr__(self) -> str:  # never the keys
        return f"MailContent({self.kind!r}, order_no={self.order_no!r})"


def compose(content: MailContent, sender: str, now) -> EmailMessage:
    lang = language(content.locale)
    t = TEXTS[lang]
    title = _one_line(content.title)
    fmt = {"order_no": content.order_no, "title": title, "quantity": content.quantity, "index": content.key_index}
    replacement = content.kind == "replacement"
    msg = EmailMessage()
    msg["Subject"] = t["replacement_subject" if replacement else "delivered_subject"].format(**fmt)
    msg["From"] = sender
    msg["To"] = content.to
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid(idstring=f"{content.order_no}.{content.mail_id}", domain="linkshop")
    # What the file transport names its file by; no buyer data.
    msg["X-Linkshop-Order"] = content.order_no
    msg["X-Linkshop-Mail"] = f"{content.kind}-{content.mail_id}"
    intro = t["replacement" if replacement else "delivered"].format(**fmt)
    keys_label = t["new_key" if replacement else "keys"]

    lines = [t["hello"], "", intro, "", f"{t['order_no']}: {content.order_no}", ""]
    if content.keys is None:
        lines += [t["link_only"], ""]
    else:
        lines += [f"{keys_label}:"] + [f"  {key}" for key in content.keys] + [""]
    if content.instructions.strip():
        lines += [f"{t['instructions']}:", content.instructions.strip(), ""]
    lines += [f"{t['link']}: {content.link}", t["keep"], "", "-- Linkshop"]
    msg.set_content("\n".join(lines) + "\n", charset="utf-8", cte="quoted-printable")

    e = html.escape
    parts = [f"<p>{e(t['hello'])}</p>", f"<p>{e(intro)}</p>",
             f"<p>{e(t['order_no'])}: <b>{e(content.order_no)}</b></p>"]
    if content.keys is None:
        parts.append(f"<p>{e(t['link_only'])}</p>")
    else:
        items = "".join(f"<li><code>{e(key)}</code></li>" for key in content.keys)
        parts.append(f"<p>{e(keys_label)}:</p><ul>{items}</ul>")
    if content.instructions.strip():
        body = e(content.instructions.strip()).replace("\n", "<br>")
        parts.append(f"<p>{e(t['instructions'])}:<br>{body}</p>")
    parts.append(f'<p><a href="{e(content.link, quote=True)}">{e(t["link"])}</a></p><p><small>{e(t["keep"])}</small></p>')
    page = (f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8"></head><body>'
            + "".join(parts) + "</body></html>")
    msg.add_alternative(page, subtype="html", charset="utf-8", cte="quoted-printable")
    msg["Content-Language"] = lang  # after the parts: a Content-* header set before moves into the first
    return msg
