from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from shared.pagination import page_schema

MAX_CENTS = 10**10


class MerchantCreateSchema(Schema):
    name = fields.Str(required=True, validate=validate.Length(min=1, max=200))
    email = fields.Email(required=True, validate=validate.Length(max=254))
    fee_bps = fields.Int(load_default=200, validate=validate.Range(min=0, max=10000))


class BindingSchema(Schema):
    """How long a referral binding made in the merchant's shop holds."""
    mode = fields.Str(required=True, validate=validate.OneOf(["permanent", "lock"]))
    lock_days = fields.Int(load_default=None, allow_none=True, strict=True, validate=validate.Range(min=1, max=3650))

    @validates_schema
    def _lock_days(self, data, **_):
        if data["mode"] == "lock" and data["lock_days"] is None:
            raise ValidationError("required when mode is lock", "lock_days")
        if data["mode"] == "permanent" and data["lock_days"] is not None:
            raise ValidationError("only with mode lock: a permanent binding has no period", "lock_days")


class StrictBool(fields.Boolean):
    """true or false, nothing that merely looks like one (0, "no")."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class MerchantPatchSchema(Schema):
    """Only what is sent changes."""
    binding = fields.Nested(BindingSchema)
    # The buyer's e-mail carries the keys (true, the default) or only the link to the order.
    mail_keys = StrictBool()


class CommissionSchema(Schema):
    levels_bps = fields.List(fields.Int(validate=validate.Range(min=0, max=10000)), required=True,
                             validate=validate.Length(min=0, max=3))
    cap_bps = fields.Int(load_default=None, allow_none=True, validate=validate.Range(min=0, max=10000))

    @validates_schema
    def _total(self, data, **_):
        if sum(data["levels_bps"]) > 10000:
            raise ValidationError("levels must not add up to more than 10000 bps", "levels_bps")


class ProductCreateSchema(Schema):
    title = fields.Str(required=True, validate=validate.Length(min=1, max=200))
    description = fields.Str(load_default="", validate=validate.Length(max=20000))
    instructions = fields.Str(load_default="", validate=validate.Length(max=20000))
    price_cents = fields.Int(required=True, strict=True, validate=validate.Range(min=1, max=MAX_CENTS))
    cost_cents = fields.Int(load_default=0, strict=True, validate=validate.Range(min=0, max=MAX_CENTS))
    currency = fields.Str(load_default="CNY", validate=validate.Regexp(r"^[A-Z]{3}$"))
    max_per_order = fields.Int(load_default=10, strict=True, validate=validate.Range(min=1, max=1000))
    status = fields.Str(load_default="active", validate=validate.OneOf(["active", "inactive"]))
    commission = fields.Nested(CommissionSchema, load_default=None, allow_none=True)

    @validates_schema
    def _cost(self, data, partial=False, **_):
        if "price_cents" in data and "cost_cents" in data and data["cost_cents"] > data["price_cents"]:
            raise ValidationError("cost must not exceed the price", "cost_cents")


class ProductPatchSchema(Schema):
    """Every field optional and without defaults: only what is sent changes."""
    title = fields.Str(validate=validate.Length(min=1, max=200))
    description = fields.Str(validate=validate.Length(max=20000))
    instructions = fields.Str(validate=validate.Length(max=20000))
    price_cents = fields.Int(strict=True, validate=validate.Range(min=1, max=MAX_CENTS))
    cost_cents = fields.Int(strict=True, validate=validate.Range(min=0, max=MAX_CENTS))
    currency = fields.Str(validate=validate.Regexp(r"^[A-Z]{3}$"))
    max_per_order = fields.Int(strict=True, validate=validate.Range(min=1, max=1000))
    status = fields.Str(validate=validate.OneOf(["active", "inactive"]))
    commission = fields.Nested(CommissionSchema, allow_none=True)


class PageSchema(page_schema(per_page=20, max_per_page=100)):
    merchant_id = fields.Str(load_default=None)
    q = fields.Str(load_default=None, validate=validate.Length(min=1, max=100))
