from marshmallow import Schema, fields, validate

from shared.pagination import page_schema

OWNER = r"^(merchant|user):[A-Za-z0-9_.\-]{1,40}$|^(platform|payouts|provider:[a-z0-9_]{1,32})$"
STATUSES = ["requested", "review", "approved", "sending", "paid", "failed", "rejected"]
METHODS = ["sandbox", "alipay", "export"]
NO_CONTROL = validate.Regexp(r"^[^\x00-\x1f\x7f]+$", error="no control characters")


PageSchema = page_schema(per_page=50, max_per_page=200, max_page=1_000_000)


class WithdrawalListSchema(PageSchema):
    status = fields.Str(load_default=None, validate=validate.OneOf(STATUSES))
    owner = fields.Str(load_default=None, validate=validate.Regexp(OWNER))
    method = fields.Str(load_default=None, validate=validate.OneOf(METHODS))
    batch_id = fields.Str(load_default=None, validate=validate.Length(min=1, max=40))


class WithdrawalSchema(Schema):
    amount_cents = fields.Int(required=True, strict=True, validate=validate.Range(min=1, max=10**12))
    destination = fields.Str(required=True, validate=[validate.Length(min=3, max=200),
                                                      validate.Regexp(r"^[^\x00-\x1f]+$", error="no control characters")])
    # The name on the receiving account: required where real money leaves (alipay, export).
    payee_name = fields.Str(allow_none=True, validate=[validate.Length(min=1, max=100), NO_CONTROL])


class DecisionSchema(Schema):
    reason = fields.Str(load_default=None, allow_none=True, validate=validate.Length(min=1, max=300))


class PaidSchema(Schema):
    """The operator's word that an exported withdrawal was paid: the bank's or Alipay's reference."""
    external_ref = fields.Str(required=True, validate=[validate.Length(min=1, max=64), NO_CONTROL])


class FailedSchema(Schema):
    reason = fields.Str(required=True, validate=[validate.Length(min=1, max=300), NO_CONTROL])
