"""Withdrawals sent by Alipay's transfer API (单笔转账, ``alipay.fund.trans.uni.transfer``),
free of Flask and of the database: what to send, and what Alipay's answers mean. The worker
(worker.py) calls it outside any transaction; the rules of what each outcome does to the
withdrawal and the ledger are domain.py's.

- ``out_biz_no`` is the withdrawal's id: Alipay's idempotency key. A transfer sent again with
  it pays at most once, so the only transfer ever sent for a withdrawal carries its id.
- ``code 10000`` with ``status SUCCESS``: paid (``order_id`` is the reference). A business
  refusal (``40004``, e.g. ``PAYEE_NOT_EXIST``, ``PAYEE_USER_INFO_ERROR``): failed, for good.
- Anything else (Alipay unreachable, ``20000``, ``SYSTEM_ERROR``, ``DEALING``, an answer we
  cannot trust) says nothing about the money: the withdrawal stays ``sending`` and is asked
  about later with ``alipay.fund.trans.common.query``. Only when the query says Alipay never
  heard of it (``ORDER_NOT_EXIST``) is the same transfer (same ``out_biz_no``) sent again.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from shared.alipay import SUCCESS, AlipayClient, AlipayUnavailable

TRANSFER = "alipay.fund.trans.uni.transfer"
QUERY = "alipay.fund.trans.common.query"
PRODUCT_CODE, BIZ_SCENE = "TRANS_ACCOUNT_NO_PWD", "DIRECT_TRANSFER"  # to an Alipay account, no password
ORDER_TITLE = "Linkshop withdrawal"
BUSINESS_FAILED = "40004"
# 40004 sub-codes that do not mean "refused": Alipay's own trouble, ask again.
UNCERTAIN_SUB_CODES = ("SYSTEM_ERROR", "ACQ.SYSTEM_ERROR")
NOT_FOUND_SUB_CODES = ("ORDER_NOT_EXIST",)
FAILED_STATUSES = ("FAIL", "CLOSED", "REFUND")  # REFUND: the money came back (退票)


@dataclass(frozen=True)
class TransferOrder:
    """One withdrawal as the transfer needs it. The payee's account and name never show in
    a repr, so never in a log line or a traceback."""
    withdrawal_id: str
    amount_cents: int
    destination: str = field(repr=False)
    payee_name: str | None = field(repr=False, default=None)


@dataclass(frozen=True)
class TransferOutcome:
    """``paid`` (with Alipay's ``external_ref``), ``failed`` (``reason``), ``unknown`` (ask
    again later; ``reason`` says why) or ``missing`` (Alipay has no such transfer)."""
    status: str
    external_ref: str | None = None
    reason: str | None = None


def yuan(cents: int) -> str:
    """Integer cents as Alipay's amount: yuan with two decimals, never through a float."""
    return f"{cents // 100}.{cents % 100:02d}"


def _scrubbed(order: TransferOrder, text: str) -> str:
    """Alipay's message may quote the payee back; the account and the name stay out of
    the withdrawal's record, its events and the logs."""
    for secret in (order.destination, order.payee_name):
        if secret:
            text = text.replace(secret, "…")
    return text[:300]


def _why(order: TransferOrder, answer: dict) -> str:
    parts = [str(answer.get(k)) for k in ("code", "sub_code") if answer.get(k)]
    message = answer.get("sub_msg") or answer.get("fail_reason") or answer.get("msg")
    return _scrubbed(order, " ".join(parts) + (f": {message}" if message else ""))


def _reference(answer: dict) -> str | None:
    ref = answer.get("order_id") or answer.get("pay_fund_order_id")
    return str(ref)[:64] if ref else None


class AlipayTransfers:
    def __init__(self, client: AlipayClient):
        self.client = client

    def transfer_biz(self, order: TransferOrder) -> dict:
        payee = {"identity": order.destination, "identity_type": "ALIPAY_LOGON_ID"}
        if order.payee_name:
            payee["name"] = order.payee_name  # Alipay checks it against the account's real name
        return {"out_biz_no": order.withdrawal_id, "trans_amount": yuan(order.amount_cents),
                "product_code": PRODUCT_CODE, "biz_scene": BIZ_SCENE, "order_title": ORDER_TITLE,
                "payee_info": payee}

    def send(self, order: TransferOrder) -> TransferOutcome:
        try:
            answer = self.client.call(TRANSFER, self.transfer_biz(order))
        except AlipayUnavailable as exc:
            return TransferOutcome("unknown", reason=_scrubbed(order, str(exc)))
        code, sub_code = str(answer.get("code") or ""), str(answer.get("sub_code") or "")
        if code == SUCCESS:
            return self._by_status(order, answer)
        if code == BUSINESS_FAILED and sub_code not in UNCERTAIN_SUB_CODES:
            return TransferOutcome("failed", reason=_why(order, answer))
        # 20000, SYSTEM_ERROR, or our own setup refused (40001/40002/40006: a key, a permission):
        # no transfer was made, or none we know of; the query says which, later.
        return TransferOutcome("unknown", reason=_why(order, answer))

    def query(self, order: TransferOrder) -> TransferOutcome:
        try:
            answer = self.client.call(QUERY, {"out_biz_no": order.withdrawal_id, "product_code": PRODUCT_CODE,
                                              "biz_scene": BIZ_SCENE})
        except AlipayUnavailable as exc:
            return TransferOutcome("unknown", reason=_scrubbed(order, str(exc)))
        code, sub_code = str(answer.get("code") or ""), str(answer.get("sub_code") or "")
        if code == SUCCESS:
            return self._by_status(order, answer)
        if code == BUSINESS_FAILED and sub_code in NOT_FOUND_SUB_CODES:
            return TransferOutcome("missing", reason=_why(order, answer))
        return TransferOutcome("unknown", reason=_why(order, answer))

    def settle(self, order: TransferOrder) -> TransferOutcome:
        """A withdrawal whose transfer has no answer yet: ask; if Alipay never got it, send it
        (the same ``out_biz_no``, so it can still be paid only once)."""
        outcome = self.query(order)
        return self.send(order) if outcome.status == "missing" else outcome

    @staticmethod
    def _by_status(order: TransferOrder, answer: dict) -> TransferOutcome:
        status = str(answer.get("status") or "")
        if status == "SUCCESS":
            return TransferOutcome("paid", external_ref=_reference(answer))
        if status in FAILED_STATUSES:
            detail = answer.get("fail_reason") or answer.get("error_code")
            return TransferOutcome("failed", reason=_scrubbed(order, status + (f": {detail}" if detail else "")))
        return TransferOutcome("unknown", reason=f"transfer {status.lower() or 'without a status'}")
