from marshmallow import Schema, fields, validate

from shared.pagination import page_schema

OWNER = r"^(merchant|user):[A-Za-z0-9_.\-]{1,40}$|^(platform|payouts|provider:[a-z0-9_]{1,32})$"
STATUSES = ["requested", "review", "approved", "paid", "rejected"]


PageSchema = page_schema(per_page=50, max_per_page=200, max_page=1_000_000)


class WithdrawalListSchema(PageSchema):
    status = fields.Str(load_default=None, validate=validate.OneOf(STATUSES))
    owner = fields.Str(load_default=None, validate=validate.Regexp(OWNER))


class WithdrawalSchema(Schema):
    amount_cents = fields.Int(required=True, strict=True, validate=validate.Range(min=1, max=10**12))
    destination = fields.Str(required=True, validate=[validate.Length(min=3, max=200),
                                                      validate.Regexp(r"^[^\x00-\x1f]+$", error="no control characters")])


class DecisionSchema(Schema):
    reason = fields.Str(load_default=None, allow_none=True, validate=validate.Length(min=1, max=300))
