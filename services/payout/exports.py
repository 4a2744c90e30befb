"""The batch file an operator uploads to pay exported withdrawals (``LINKSHOP_PAYOUT_METHOD=
export``): CSV in the columns of Alipay's batch transfer template (批量转账到支付宝账户),
which a bank's batch payment takes as well after a column rename.

- UTF-8 with a BOM: Excel opens Chinese names correctly only with it.
- ``金额`` is the amount the distributor receives (the fee stays with the platform), in yuan
  with two decimals; ``备注`` carries the withdrawal id, so the statement names the withdrawal.
- A cell that starts with ``=``, ``+``, ``-``, ``@`` (or a tab or carriage return) is
  prefixed with ``'``: a spreadsheet would run it as a formula (CSV injection). Such an
  account or name is then visibly marked for the operator to check before uploading.
"""
from __future__ import annotations

import csv
import io

from .transfers import yuan

COLUMNS = ("序号", "收款方支付宝账号", "收款方姓名", "金额", "备注")
BOM = "\ufeff"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell(value) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def batch_csv(withdrawals) -> bytes:
    """The file for these withdrawals (in the order given), as bytes to send."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for n, w in enumerate(withdrawals, 1):
        writer.writerow([n, cell(w.destination), cell(w.payee_name), yuan(w.amount_cents), cell(w.id)])
    return (BOM + out.getvalue()).encode("utf-8")
