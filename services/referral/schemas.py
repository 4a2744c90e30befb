from marshmallow import Schema, fields, validate

from shared.pagination import page_schema


class RegisterSchema(Schema):
    email = fields.Email(required=True, validate=validate.Length(max=254))
    invite_code = fields.Str(load_default=None, allow_none=True, validate=validate.Length(min=4, max=16))
    device_id = fields.Str(load_default=None, allow_none=True, validate=validate.Length(min=1, max=128))
    merchant_id = fields.Str(load_default=None, allow_none=True, validate=validate.Length(min=1, max=40))


class BindSchema(Schema):
    invite_code = fields.Str(required=True, validate=validate.Length(min=4, max=16))
    merchant_id = fields.Str(load_default=None, allow_none=True, validate=validate.Length(min=1, max=40))


class BindingRuleSchema(Schema):
    """The operator's default, for bindings made outside any merchant's shop."""
    mode = fields.Str(required=True, validate=validate.OneOf(["permanent", "lock"]))
    lock_days = fields.Int(load_default=0, strict=True, validate=validate.Range(min=0, max=3650))


PageSchema = page_schema(per_page=50, max_per_page=200)


class TeamQuerySchema(PageSchema):
    parent = fields.Str(load_default=None, validate=validate.Length(min=1, max=40))
    days = fields.Int(load_default=30, validate=validate.Range(min=1, max=366))


class ExplainQuerySchema(Schema):
    user_id = fields.Str(required=True, validate=validate.Length(min=1, max=40))


class DecisionSchema(Schema):
    reason = fields.Str(load_default="rejected by the operator", validate=validate.Length(min=1, max=300))
