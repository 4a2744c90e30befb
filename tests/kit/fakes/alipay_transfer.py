"""A fake of Alipay's transfer to an Alipay account (单笔转账), written from Alipay's
documentation: ``alipay.fund.trans.uni.transfer`` and ``alipay.fund.trans.common.query``
on the shared fake gateway (signed requests checked, answers signed with the fake's key).

As Alipay does, it pays each ``out_biz_no`` at most once: the same request again answers
the first result, the same ``out_biz_no`` with other parameters is refused. ``calls`` counts
the transfer requests per ``out_biz_no`` and ``paid`` the transfers that moved money, so a
test can prove a withdrawal left exactly once, and whether it was sent again at all.

Trouble on demand:
- ``refuse[account] = "PAYEE_NOT_EXIST"`` (or ``PAYEE_USER_INFO_ERROR``...): a 40004 refusal;
- ``fail_transfers = n``: the next n transfer requests answer HTTP 500 and do nothing;
- ``lose_answers = n``: the next n transfers are made, then the answer is lost on the way
  (a proxy's 504): only a query can tell;
- ``stall = n``: the next n transfers are made, then answered ``stall_s`` seconds late, after
  the caller stopped waiting (a time-out; the test shortens ``shared.alipay.TIMEOUT``);
- ``busy = n``: the next n transfer requests answer ``20000`` (try again) and do nothing;
- ``hold = True``: new transfers stay ``DEALING`` until ``finish(out_biz_no, status)``.
"""
from __future__ import annotations

import re
import secrets
import time
from collections import Counter
from datetime import datetime

from flask import Response

from .alipay_gateway import APP_ID, FakeAlipayGateway

TRANSFER, QUERY = "alipay.fund.trans.uni.transfer", "alipay.fund.trans.common.query"
AMOUNT = re.compile(r"^(0|[1-9]\d*)\.\d{2}$")
REFUSALS = {"PAYEE_NOT_EXIST": "收款账号不存在", "PAYEE_USER_INFO_ERROR": "收款方姓名与账号不匹配",
            "PAYER_BALANCE_NOT_ENOUGH": "付款方余额不足"}


def _failed(sub_code: str, sub_msg: str | None = None) -> dict:
    return {"code": "40004", "msg": "Business Failed", "sub_code": sub_code,
            "sub_msg": sub_msg or REFUSALS.get(sub_code, sub_code)}


class FakeAlipayTransfers(FakeAlipayGateway):
    def __init__(self, app_id: str = APP_ID):
        super().__init__(app_id)
        self.transfers: dict[str, dict] = {}  # out_biz_no → what Alipay holds of it
        self.calls: Counter = Counter()  # transfer requests, per out_biz_no
        self.paid: Counter = Counter()  # transfers that moved money, per out_biz_no (never above 1)
        self.queries: Counter = Counter()
        self.refuse: dict[str, str] = {}
        self.fail_transfers = self.lose_answers = self.busy = self.stall = 0
        self.stall_s = 1.5
        self.hold = False
        self.methods[TRANSFER] = self._transfer
        self.methods[QUERY] = self._query

    # -- the API -------------------------------------------------------------------------

    def _transfer(self, biz: dict, params: dict):
        out_biz_no = str(biz.get("out_biz_no") or "")
        self.calls[out_biz_no] += 1
        if self.fail_transfers:
            self.fail_transfers -= 1
            return Response("internal error", status=500)
        if self.busy:
            self.busy -= 1
            return {"code": "20000", "msg": "Service Currently Unavailable", "sub_code": "isp.unknow-error",
                    "sub_msg": "系统繁忙"}
        problem = self._invalid(biz)
        if problem:
            return {"code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-arguments",
                    "sub_msg": problem}
        payee = biz["payee_info"]
        known = self.transfers.get(out_biz_no)
        if known is not None:  # Alipay's idempotency: the first result, or a refusal if it differs
            if (known["trans_amount"], known["identity"]) != (biz["trans_amount"], payee["identity"]):
                return _failed("PAYMENT_INFO_INCONSISTENCY", "两次请求参数不一致")
            return self._transfer_answer(known)
        if payee["identity"] in self.refuse:
            return _failed(self.refuse[payee["identity"]])
        record = {"out_biz_no": out_biz_no, "order_id": "2026" + secrets.token_hex(10),
                  "pay_fund_order_id": "2026" + secrets.token_hex(10), "trans_amount": biz["trans_amount"],
                  "identity": payee["identity"], "name": payee.get("name"), "fail_reason": None,
                  "status": "DEALING" if self.hold else "SUCCESS",
                  "trans_date": datetime.now().strftime("%Y-%m-%d %H:%M:%S")}
        self.transfers[out_biz_no] = record
        if record["status"] == "SUCCESS":
            self.paid[out_biz_no] += 1
        if self.lose_answers:
            self.lose_answers -= 1
            return Response("<html>504 Gateway Time-out</html>", status=504)
        if self.stall:
            self.stall -= 1
            time.sleep(self.stall_s)
        return self._transfer_answer(record)

    @staticmethod
    def _invalid(biz: dict) -> str | None:
        if biz.get("product_code") != "TRANS_ACCOUNT_NO_PWD" or biz.get("biz_scene") != "DIRECT_TRANSFER":
            return "product_code/biz_scene"
        if not biz.get("out_biz_no") or not biz.get("order_title"):
            return "out_biz_no/order_title"
        if not AMOUNT.match(str(biz.get("trans_amount") or "")) or float(biz["trans_amount"]) < 0.1:
            return "trans_amount"
        payee = biz.get("payee_info") or {}
        if not payee.get("identity") or payee.get("identity_type") != "ALIPAY_LOGON_ID":
            return "payee_info.identity"
        if not payee.get("name"):  # required for ALIPAY_LOGON_ID
            return "payee_info.name"
        return None

    @staticmethod
    def _transfer_answer(record: dict) -> dict:
        return {"code": "10000", "msg": "Success", "out_biz_no": record["out_biz_no"], "order_id": record["order_id"],
                "pay_fund_order_id": record["pay_fund_order_id"], "status": record["status"],
                "trans_date": record["trans_date"]}

    def _query(self, biz: dict, params: dict):
        out_biz_no = str(biz.get("out_biz_no") or "")
        self.queries[out_biz_no] += 1
        if biz.get("product_code") != "TRANS_ACCOUNT_NO_PWD" or biz.get("biz_scene") != "DIRECT_TRANSFER":
            return {"code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-arguments"}
        record = self.transfers.get(out_biz_no)
        if record is None:
            return _failed("ORDER_NOT_EXIST", "转账订单不存在")
        answer = {"code": "10000", "msg": "Success", "out_biz_no": out_biz_no, "order_id": record["order_id"],
                  "pay_fund_order_id": record["pay_fund_order_id"], "status": record["status"],
                  "trans_amount": record["trans_amount"]}
        if record["status"] == "SUCCESS":
            answer["pay_date"] = record["trans_date"]
        if record["fail_reason"]:
            answer["fail_reason"] = record["fail_reason"]
        return answer

    # -- the test's hand -----------------------------------------------------------------

    def finish(self, out_biz_no: str, status: str = "SUCCESS", fail_reason: str | None = None) -> None:
        """A held (DEALING) transfer ends: SUCCESS moves the money, FAIL does not."""
        record = self.transfers[out_biz_no]
        assert record["status"] == "DEALING", record["status"]
        record["status"], record["fail_reason"] = status, fail_reason
        if status == "SUCCESS":
            self.paid[out_biz_no] += 1
