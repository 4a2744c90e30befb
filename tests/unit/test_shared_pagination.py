"""shared.pagination: the query schema (page, per_page with a service's limits) and the page of a
select with its envelope {"items", "page", "per_page", "total"}."""
import pytest
from flask import Flask
from marshmallow import ValidationError, fields
from sqlalchemy import Integer, MetaData, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from shared.errors import ApiError, load_args
from shared.pagination import PageArgs, count, page_rows, page_schema, paginate


class Base(DeclarativeBase):
    metadata = MetaData()


class Thing(Base):
    __tablename__ = "things"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    colour: Mapped[str] = mapped_column(String(10))


@pytest.fixture
def session():
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all([Thing(id=i, colour="red" if i % 2 else "blue") for i in range(1, 8)])  # 4 red, 3 blue
        s.commit()
        yield s
    engine.dispose()


def view(thing):
    return {"id": thing.id}


# -- the query schema --------------------------------------------------------------------------

def test_defaults_and_limits_are_the_services():
    assert page_schema()().load({}) == {"page": 1, "per_page": 50}
    assert page_schema(per_page=20, max_per_page=100)().load({}) == {"page": 1, "per_page": 20}
    assert page_schema(per_page=20, max_per_page=100)().load({"page": "3", "per_page": "100"}) == \
        {"page": 3, "per_page": 100}
    assert PageArgs().load({}) == {"page": 1, "per_page": 50}


@pytest.mark.parametrize("query,field", [
    ({"page": "0"}, "page"), ({"page": "-1"}, "page"), ({"page": "two"}, "page"),
    ({"per_page": "0"}, "per_page"), ({"per_page": "101"}, "per_page"), ({"per_page": "x"}, "per_page"),
    ({"page": "1000001"}, "page"), ({"sort": "id"}, "sort"),
])
def test_out_of_range_or_unknown_parameters_are_refused(query, field):
    schema = page_schema(per_page=20, max_per_page=100, max_page=1_000_000)()
    with pytest.raises(ValidationError) as refused:
        schema.load(query)
    assert list(refused.value.messages) == [field]


def test_without_max_page_any_page_is_allowed():
    assert page_schema()().load({"page": "5000000"})["page"] == 5_000_000


def test_a_default_outside_the_limits_is_a_programming_error():
    with pytest.raises(ValueError, match="outside 1..100"):
        page_schema(per_page=200, max_per_page=100)


def test_a_service_adds_its_filters_to_the_page():
    class ListSchema(page_schema(per_page=10, max_per_page=30)):
        status = fields.Str(load_default=None)

    assert ListSchema().load({"status": "paid", "page": "2"}) == {"status": "paid", "page": 2, "per_page": 10}
    assert ListSchema.__name__ == "ListSchema" and issubclass(ListSchema, PageArgs)


def test_load_args_answers_422_naming_the_field():
    app = Flask("t")
    with app.test_request_context("/?per_page=500"):
        with pytest.raises(ApiError) as refused:
            load_args(page_schema(per_page=20, max_per_page=100)())
    assert (refused.value.status, refused.value.code) == (422, "invalid")
    assert refused.value.fields == {"per_page": ["Must be greater than or equal to 1 and less than or equal to 100."]}


# -- the page of a select ------------------------------------------------------------------------

def test_paginate_pages_through_in_the_querys_order(session):
    query = select(Thing).order_by(Thing.id.desc())
    pages = [paginate(session, query, {"page": n, "per_page": 3}, view) for n in (1, 2, 3, 4)]
    assert pages[0] == {"items": [{"id": 7}, {"id": 6}, {"id": 5}], "page": 1, "per_page": 3, "total": 7}
    assert [[i["id"] for i in p["items"]] for p in pages] == [[7, 6, 5], [4, 3, 2], [1], []]
    assert [(p["page"], p["per_page"], p["total"]) for p in pages] == [(n, 3, 7) for n in (1, 2, 3, 4)]
    assert list(pages[0]) == ["items", "page", "per_page", "total"]  # the order the JSON keeps


def test_total_counts_the_filtered_rows_whatever_the_order(session):
    red = select(Thing).where(Thing.colour == "red")
    assert count(session, red) == 4
    assert count(session, red.order_by(Thing.id.desc())) == 4
    assert count(session, select(Thing).where(Thing.colour == "green")) == 0
    got = paginate(session, red.order_by(Thing.id), {"page": 2, "per_page": 3}, view)
    assert got == {"items": [{"id": 7}], "page": 2, "per_page": 3, "total": 4}


def test_page_rows_is_the_page_alone(session):
    rows = page_rows(session, select(Thing).order_by(Thing.id), {"page": 2, "per_page": 2})
    assert [t.id for t in rows] == [3, 4]
    assert page_rows(session, select(Thing).order_by(Thing.id), {"page": 9, "per_page": 2}) == []
