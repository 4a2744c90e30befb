"""Keys by e-mail (issue 14): on delivery the buyer gets an e-mail in the language they bought
in, with the order link and the keys (or the link only, as the merchant chooses), sent by the
worker through a real SMTP server (aiosmtpd on a local port), retried with backoff."""
from __future__ import annotations

import email
import email.policy
import logging
import re
import socket
from datetime import timedelta
from urllib.parse import urlsplit, parse_qs

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from services.delivery import domain
from services.delivery.config import load_config
from services.delivery.events import build_handlers
from services.delivery.mail import SmtpTransport, parse_smtp_url
from services.delivery.models import Mail
from shared.config import ConfigError, load_settings
from shared.events import utcnow
from tests.kit import Shop
from tests.kit.helpers import inject, outbox_events

KEYS = ["KEY-AAAA-1111", "KEY-BBBB-2222", "KEY-CCCC-3333"]
REFUSE_FOREVER = 10**9


class SmtpInbox:
    """What a real SMTP server received; ``refuse`` answers the next n messages with 451."""

    def __init__(self):
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []
        self.refuse = 0
        self.refused = 0
        self.url = ""

    async def handle_DATA(self, server, session, envelope):
        if self.refuse:
            self.refuse -= 1
            self.refused += 1
            return "451 4.3.0 mailbox busy, try again later"
        self.messages.append((list(envelope.rcpt_tos),
                              email.message_from_bytes(envelope.content, policy=email.policy.default)))
        return "250 2.0.0 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp():
    inbox = SmtpInbox()
    port = _free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    inbox.url = f"smtp://127.0.0.1:{port}"
    yield inbox
    controller.stop()


@pytest.fixture
def mailing_shop(backend, tmp_path, smtp):
    return Shop(tmp_path, backend, LINKSHOP_SMTP_URL=smtp.url, LINKSHOP_MAIL_FROM="Game Shop <shop@example.com>")


def _seller(shop, keys=KEYS, **product):
    merchant, merchant_id = shop.merchant()
    pid = shop.product(merchant, **({"title": "Game card <Gold>", "instructions": "Redeem at https://game.example/redeem"}
                                    | product))
    shop.import_keys(merchant, pid, list(keys))
    return merchant, pid


def _delivered(shop, pid, quantity=2, locale="en", email="buyer@example.com"):
    order = shop.buy(pid, quantity=quantity, locale=locale, email=email)
    shop.drain()  # delivery.order.delivered reaches delivery's own inbox: one mail row
    return order


def _db(shop):
    return shop.system.apps["delivery"].extensions["linkshop"].db


def _mails(shop, order_no=None):
    with _db(shop).read() as s:
        query = select(Mail).order_by(Mail.id)
        if order_no:
            query = query.where(Mail.order_no == order_no)
        return [{c: getattr(m, c) for c in ("order_no", "kind", "ref", "status", "attempts", "next_attempt_at",
                                             "last_error", "sent_at")} for m in s.scalars(query)]


def _text(message) -> str:
    return message.get_body(("plain",)).get_content()


def _html(message) -> str:
    return message.get_body(("html",)).get_content()


def _link(message) -> str:
    [link] = re.findall(r"https?://\S+/order/\S+", _text(message))
    return link


def _send(shop, at=None):
    """The worker's send_mails job, with its clock at ``at`` (default now)."""
    config = shop.system.configs["delivery"]
    vault = shop.system.apps["delivery"].extensions["linkshop"].extra["vault"]
    return domain.send_mails(_db(shop), vault, SmtpTransport(config.smtp), config.mail_from,
                             shop.system.settings["delivery"].public_url, now_fn=lambda: at or utcnow())


def test_a_delivered_order_mails_its_keys_and_a_working_link_in_english(mailing_shop, smtp):
    shop = mailing_shop
    _, pid = _seller(shop)
    order = _delivered(shop, pid, quantity=2, locale="en")
    assert [m["kind"] for m in _mails(shop)] == ["delivered"] and smtp.messages == []
    shop.jobs()
    [(to, message)] = smtp.messages
    assert to == ["buyer@example.com"] and message["To"] == "buyer@example.com"
    assert message["From"] == "Game Shop <shop@example.com>"
    assert message["Subject"].strip() == f"Order {order['order_no']} delivered: Game card <Gold>"
    text, page = _text(message), _html(message)
    keys = shop.view(order)["keys"]
    assert len(keys) == 2 and all(k in text and k in page for k in keys)
    assert "Redeem at https://game.example/redeem" in text and order["order_no"] in text
    assert "Game card &lt;Gold&gt;" in page and "<Gold>" not in page  # merchant's words escaped
    link = _link(message)
    assert link.startswith(shop.system.settings["delivery"].public_url + "/order/" + order["order_no"] + "?token=")
    token = parse_qs(urlsplit(link).query)["token"][0]
    assert token != order["access_token"]
    r = shop.delivery.get(f"/delivery/v1/orders/{order['order_no']}?token={token}")
    assert r.status_code == 200 and r.json["keys"] == keys
    # The link opens its own order only, and a token a character off opens nothing.
    other = _delivered(shop, pid, quantity=1)
    assert shop.delivery.get(f"/delivery/v1/orders/{other['order_no']}?token={token}").status_code == 404
    assert shop.delivery.get(f"/delivery/v1/orders/{order['order_no']}?token={token[:-1]}x").status_code == 404
    [mail] = _mails(shop, order["order_no"])
    assert mail["status"] == "sent" and mail["attempts"] == 1 and mail["sent_at"] is not None


def test_the_mail_speaks_chinese_when_the_buyer_bought_in_chinese(mailing_shop, smtp):
    shop = mailing_shop
    _, pid = _seller(shop, title="游戏点卡 100 元", instructions="在游戏内兑换")
    order = _delivered(shop, pid, quantity=1, locale="zh-CN")
    shop.jobs()
    [(_, message)] = smtp.messages
    assert message["Subject"].strip() == f"订单 {order['order_no']} 已发货：游戏点卡 100 元"
    assert message["Content-Language"] == "zh-CN"
    text = _text(message)
    assert "卡密" in text and "在游戏内兑换" in text and shop.view(order)["keys"][0] in text
    assert "订单链接" in text and 'lang="zh-CN"' in _html(message)
    token = parse_qs(urlsplit(_link(message)).query)["token"][0]
    assert shop.delivery.get(f"/delivery/v1/orders/{order['order_no']}?token={token}").status_code == 200


def test_a_merchant_may_mail_the_link_only(mailing_shop, smtp):
    shop = mailing_shop
    merchant, pid = _seller(shop)
    r = shop.catalog.patch("/catalog/v1/merchants/me", json={"mail_keys": False}, headers=merchant)
    assert r.status_code == 200 and r.json["mail_keys"] is False
    shop.drain()
    order = _delivered(shop, pid, quantity=2)
    shop.jobs()
    [(_, message)] = smtp.messages
    keys = shop.view(order)["keys"]
    assert not any(k in message.as_string() for k in KEYS)
    assert "Open the order link below to see your keys." in _text(message)
    token = parse_qs(urlsplit(_link(message)).query)["token"][0]
    assert shop.delivery.get(f"/delivery/v1/orders/{order['order_no']}?token={token}").json["keys"] == keys
    # And back: the next buyer gets the keys again.
    assert shop.catalog.patch("/catalog/v1/merchants/me", json={"mail_keys": True}, headers=merchant).json["mail_keys"]
    shop.drain()
    second = _delivered(shop, pid, quantity=1)
    shop.jobs()
    assert shop.view(second)["keys"][0] in _text(smtp.messages[-1][1])


def test_a_replaced_key_is_mailed_to_the_buyer(mailing_shop, smtp):
    shop = mailing_shop
    merchant, pid = _seller(shop)
    order = _delivered(shop, pid, quantity=2, locale="en")
    shop.jobs()
    before = shop.view(order)["keys"]
    r = shop.delivery.post(f"/delivery/v1/orders/{order['order_no']}/replace", json={"key_index": 1}, headers=merchant)
    assert r.status_code == 200, r.json
    after = shop.view(order)["keys"]
    [fresh] = set(after) - set(before)
    shop.jobs()
    assert len(smtp.messages) == 2
    message = smtp.messages[1][1]
    assert message["Subject"].strip() == f"A key of order {order['order_no']} was replaced: Game card <Gold>"
    text = _text(message)
    assert fresh in text and "key #2" in text and before[1] not in text and before[0] not in text
    assert [(m["kind"], m["status"]) for m in _mails(shop, order["order_no"])] == [("delivered", "sent"),
                                                                                ("replacement", "sent")]


def test_a_refusing_server_is_retried_with_backoff_until_it_takes_the_mail(mailing_shop, smtp, caplog):
    shop = mailing_shop
    _, pid = _seller(shop)
    order = _delivered(shop, pid)
    smtp.refuse = 2
    shop.jobs()  # the first attempt: 451
    [mail] = _mails(shop)
    assert mail["status"] == "queued" and mail["attempts"] == 1 and "451" in mail["last_error"]
    start = utcnow()
    assert mail["next_attempt_at"] > start + timedelta(seconds=5)
    shop.jobs()  # not due yet: nothing is tried
    assert smtp.refused == 1 and _mails(shop)[0]["attempts"] == 1
    assert _send(shop, start + timedelta(seconds=11)) == 1  # the second: 451 again, then 30 s
    [mail] = _mails(shop)
    assert mail["attempts"] == 2 and mail["next_attempt_at"] >= start + timedelta(seconds=40)
    assert _send(shop, start + timedelta(seconds=20)) == 0
    assert _send(shop, start + timedelta(seconds=42)) == 1
    [mail] = _mails(shop)
    assert (mail["status"], mail["attempts"], mail["last_error"]) == ("sent", 3, None)
    assert smtp.refused == 2 and len(smtp.messages) == 1
    assert any(order["order_no"] in r.getMessage() and "will retry" in r.getMessage() for r in caplog.records)


def test_a_server_that_keeps_refusing_leaves_the_mail_failed(mailing_shop, smtp):
    shop = mailing_shop
    _, pid = _seller(shop)
    _delivered(shop, pid)
    smtp.refuse = REFUSE_FOREVER
    at = utcnow()
    for attempt, wait in enumerate(domain.MAIL_BACKOFF_S, start=1):
        assert _send(shop, at) == 1
        [mail] = _mails(shop)
        assert (mail["status"], mail["attempts"]) == ("queued", attempt)
        at += timedelta(seconds=wait + 1)
    assert _send(shop, at) == 1  # the last attempt
    [mail] = _mails(shop)
    assert mail["status"] == "failed" and mail["attempts"] == len(domain.MAIL_BACKOFF_S) + 1
    assert "451" in mail["last_error"] and not any(k in mail["last_error"] for k in KEYS)
    assert _send(shop, at + timedelta(days=1)) == 0 and smtp.messages == []


def test_a_redelivered_event_sends_one_mail(mailing_shop, smtp):
    shop = mailing_shop
    _, pid = _seller(shop)
    order = _delivered(shop, pid)
    [delivered] = [e for e in outbox_events(shop.system, "delivery", "delivery.order.delivered")
                   if e["payload"]["order_no"] == order["order_no"]]
    inject(shop.system, "delivery", delivered)  # the relay sent it twice: the inbox knows its id
    inject(shop.system, "delivery", {**delivered, "id": "00000000-0000-4000-8000-000000000001"})  # another id
    shop.drain()
    shop.jobs()
    shop.jobs()
    assert len(_mails(shop)) == 1 and len(smtp.messages) == 1


def test_no_key_and_no_link_token_in_any_log_line(mailing_shop, smtp, caplog):
    caplog.set_level(logging.DEBUG)
    shop = mailing_shop
    merchant, pid = _seller(shop, keys=KEYS + ["KEY-DDDD-4444"])
    smtp.refuse = 1
    order = _delivered(shop, pid, quantity=2)
    shop.jobs()  # refused, logged
    _send(shop, utcnow() + timedelta(seconds=11))  # sent, logged
    shop.delivery.post(f"/delivery/v1/orders/{order['order_no']}/replace", json={"key_index": 0}, headers=merchant)
    shop.jobs()
    assert len(smtp.messages) == 2
    token = parse_qs(urlsplit(_link(smtp.messages[0][1])).query)["token"][0]
    ours = [r for r in caplog.records if r.name != "mail.log"]  # aiosmtpd's own log is the remote server's
    assert any(order["order_no"] in r.getMessage() for r in ours)
    for record in ours:
        line = record.getMessage()
        assert not any(k in line for k in KEYS + ["KEY-DDDD-4444"]), line
        assert token not in line and "Redeem at" not in line, line


def test_embedded_without_smtp_writes_the_mail_to_var_mail(shop, tmp_path):
    config = shop.system.configs["delivery"]
    assert config.smtp is None and config.mail_note == f"e-mail: written to {tmp_path / 'mail'}/ (no LINKSHOP_SMTP_URL)"
    _, pid = _seller(shop)
    order = _delivered(shop, pid, quantity=1, locale="en")
    shop.jobs()
    [path] = (tmp_path / "mail").glob("*.eml")
    assert order["order_no"] in path.name and path.stat().st_mode & 0o077 == 0
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert message["From"] == "Linkshop <no-reply@localhost>" and message["To"] == "buyer@example.com"
    assert shop.view(order)["keys"][0] in _text(message)
    token = parse_qs(urlsplit(_link(message)).query)["token"][0]
    assert shop.delivery.get(f"/delivery/v1/orders/{order['order_no']}?token={token}").status_code == 200


# -- settings --------------------------------------------------------------------------------

REAL = {"BUS_URL": "amqp://guest:guest@rabbit:5672//", "LINKSHOP_ADMIN_TOKEN": "a" * 32,
        "LINKSHOP_TOKEN_SECRET": "t" * 32, "LINKSHOP_VAULT_KEY": "v" * 32, "DELIVERY_DATABASE_URL": "sqlite://"}


def _config(**env):
    env = {**REAL, **env}
    return load_config(load_settings("delivery", env), env)


def test_smtp_settings():
    config = _config(LINKSHOP_SMTP_URL="smtp://mailer%40shop:p%3Ass@mail.example.com",
                     LINKSHOP_MAIL_FROM="Shop <no-reply@shop.example>")
    assert (config.smtp.host, config.smtp.port, config.smtp.implicit_tls) == ("mail.example.com", 587, False)
    assert (config.smtp.user, config.smtp.password) == ("mailer@shop", "p:ss")
    assert "p:ss" not in repr(config) and "p%3Ass" not in config.mail_note
    assert config.mail_enabled and config.mail_note == \
        "e-mail: sent through smtp://mail.example.com:587 as Shop <no-reply@shop.example>"
    assert parse_smtp_url("smtps://u:p@mail.example.com").port == 465
    assert parse_smtp_url("smtp://mail.example.com:2525").port == 2525
    with pytest.raises(ConfigError, match="LINKSHOP_MAIL_FROM"):
        _config(LINKSHOP_SMTP_URL="smtp://mail.example.com")
    with pytest.raises(ConfigError, match="smtp://"):
        _config(LINKSHOP_SMTP_URL="http://mail.example.com", LINKSHOP_MAIL_FROM="x@example.com")


def test_real_mode_without_smtp_queues_no_mail(caplog):
    config = _config()
    assert not config.mail_enabled and config.mail_note == "e-mail: off (no LINKSHOP_SMTP_URL): buyers get no e-mail"
    from services.delivery.worker import build_worker
    with caplog.at_level(logging.WARNING):
        spec = build_worker(load_settings("delivery", REAL), config=config)
    assert "send_mails" not in [job.name for job in spec.jobs]
    assert any("buyers get no e-mail" in r.getMessage() for r in caplog.records)
    spec.db.dispose()

    class Session:
        def __getattr__(self, name):
            raise AssertionError("a delivered order writes no mail")
    build_handlers(None, mail=False).get("delivery.order.delivered")(Session(), {"payload": {"order_no": "1"}})


# -- the SMTP conversation -------------------------------------------------------------------

def _message():
    from services.delivery.mail import MailContent, compose
    return compose(MailContent(kind="delivered", mail_id=1, order_no="260101000000123456789012", to="b@example.com",
                               locale="en", title="Card", quantity=1, instructions="", link="http://x/order/1?token=t",
                               keys=["KEY-AUTH-0001"]), "Shop <shop@example.com>", utcnow())


@pytest.fixture
def smtp_auth():
    """A server that takes mail only from mailer@shop with the password p:ss (no TLS: loopback)."""
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"mailer@shop", b"p:ss")
        return AuthResult(success=ok)

    inbox = SmtpInbox()
    port = _free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, authenticator=authenticate,
                            auth_required=True, auth_require_tls=False)
    controller.start()
    inbox.port = port
    yield inbox
    controller.stop()


# aiosmtpd warns of AUTH without TLS: this server is the test's own, on loopback.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_the_smtp_user_and_password_come_from_the_url(smtp_auth, monkeypatch):
    from services.delivery import mail
    from services.delivery.mail import MailError
    good = SmtpTransport(parse_smtp_url(f"smtp://mailer%40shop:p%3Ass@127.0.0.1:{smtp_auth.port}"), timeout=5)
    good.send(_message())
    assert len(smtp_auth.messages) == 1 and "KEY-AUTH-0001" in _text(smtp_auth.messages[0][1])
    with pytest.raises(MailError, match="530"):  # no credentials: the server wants them
        SmtpTransport(parse_smtp_url(f"smtp://127.0.0.1:{smtp_auth.port}"), timeout=5).send(_message())
    # Anywhere but this machine, a password never crosses a connection without TLS.
    monkeypatch.setattr(mail, "_loopback", lambda host: False)
    with pytest.raises(MailError, match="STARTTLS"):
        good.send(_message())
    assert len(smtp_auth.messages) == 1
