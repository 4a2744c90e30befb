from marshmallow import Schema, ValidationError, fields, validate

from shared.pagination import page_schema

from .domain import BLOCK_KINDS


PageSchema = page_schema(per_page=50, max_per_page=200)


class DecisionQuerySchema(PageSchema):
    order_no = fields.Str(load_default=None, validate=validate.Length(min=1, max=32))
    withdrawal_id = fields.Str(load_default=None, validate=validate.Length(min=1, max=64))
    user_id = fields.Str(load_default=None, validate=validate.Length(min=1, max=40))
    status = fields.Str(load_default=None, validate=validate.OneOf(["approve", "review", "reject"]))
    kind = fields.Str(load_default=None, validate=validate.OneOf(["order", "commission", "withdrawal"]))


class OperatorDecisionSchema(Schema):
    note = fields.Str(load_default=None, allow_none=True, validate=validate.Length(min=1, max=300))


class StrictBool(fields.Field):
    """true or false, nothing that merely looks like one."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise ValidationError("must be true or false")
        return value


class RuleUpdateSchema(Schema):
    enabled = StrictBool()
    score = fields.Int(strict=True, validate=validate.Range(min=0, max=1000))
    params = fields.Dict(keys=fields.Str())


class BlockSchema(Schema):
    kind = fields.Str(required=True, validate=validate.OneOf(BLOCK_KINDS))
    value = fields.Str(required=True, validate=validate.Length(min=1, max=254))
    reason = fields.Str(load_default=None, allow_none=True, validate=validate.Length(max=300))


class BlockQuerySchema(PageSchema):
    kind = fields.Str(load_default=None, validate=validate.OneOf(BLOCK_KINDS))
