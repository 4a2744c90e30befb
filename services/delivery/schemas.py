from marshmallow import Schema, fields, validate

EMAIL = validate.Length(max=254)
LOCALES = ("zh-CN", "en")  # the storefront's languages; an order's e-mail speaks the buyer's


class KeyImportSchema(Schema):
    keys = fields.List(fields.Raw(), required=True, validate=validate.Length(min=1, max=200_000))
    reusable = fields.Bool(load_default=False)


class OrderCreateSchema(Schema):
    product_id = fields.Str(required=True, validate=validate.Length(min=1, max=40))
    quantity = fields.Int(required=True, strict=True, validate=validate.Range(min=1, max=1000))
    email = fields.Email(required=True, validate=EMAIL)
    ref_code = fields.Str(load_default=None, allow_none=True, validate=validate.Length(min=1, max=64))
    query_password = fields.Str(load_default=None, allow_none=True, validate=validate.Length(min=4, max=128))
    device_id = fields.Str(load_default=None, allow_none=True, validate=validate.Length(min=1, max=128))
    # Among the enabled providers (default: the operator's first), and the way to pay it
    # (epay: alipay | wxpay; default: the provider's first).
    provider = fields.Str(load_default=None, allow_none=True, validate=validate.Length(min=1, max=32))
    pay_type = fields.Str(load_default=None, allow_none=True, validate=validate.Length(min=1, max=16))
    locale = fields.Str(load_default="zh-CN", validate=validate.OneOf(LOCALES))


class LookupSchema(Schema):
    email = fields.Email(required=True, validate=EMAIL)
    order_no = fields.Str(load_default=None, allow_none=True, validate=validate.Length(min=1, max=32))
    query_password = fields.Str(load_default=None, allow_none=True, validate=validate.Length(min=1, max=128))


class ReplaceSchema(Schema):
    key_index = fields.Int(required=True, strict=True, validate=validate.Range(min=0))


class RefundSchema(Schema):
    quantity = fields.Int(load_default=None, allow_none=True, strict=True, validate=validate.Range(min=1))
    reason = fields.Str(required=True, validate=validate.Length(min=1, max=500))


class OrderTokenSchema(Schema):
    token = fields.Str(required=True, validate=validate.Length(min=1, max=200))


class KeyReportSchema(Schema):
    key_index = fields.Int(required=True, strict=True, validate=validate.Range(min=0))
    reason = fields.Str(required=True, validate=validate.Length(min=1, max=500))
