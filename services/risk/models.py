from sqlalchemy.orm import DeclarativeBase

from shared.inbox import inbox_table
from shared.outbox import Outbox


class Base(DeclarativeBase):
    pass


outbox = Outbox(Base.metadata, producer="risk")
inbox = inbox_table(Base.metadata)
