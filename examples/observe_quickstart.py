"""observe quick start: find the N+1 in a loop, print the fix, roll up latency.

Run: .venv/bin/python examples/observe_quickstart.py   (starts its own local PostgreSQL)
"""

from __future__ import annotations

from sqlalchemy import ForeignKey, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from hotpath.observe import Profiler
from hotpath.stack import LocalStack


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    orders: Mapped[list[Order]] = relationship(back_populates="customer")


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    customer: Mapped[Customer] = relationship(back_populates="orders")


def list_customers(session: Session) -> list[tuple[int, int]]:
    customers = session.scalars(select(Customer)).all()
    return [(c.id, len(c.orders)) for c in customers]  # one query per customer


with LocalStack(replicas=0, redis=False) as stack:
    engine = create_engine(stack.primary.url)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(Customer(id=i, orders=[Order(), Order()]) for i in range(1, 21))
        session.commit()

    profiler = Profiler(engine, modes={"n_plus_one": "log"})
    for _ in range(3):
        with profiler.scope("GET /customers") as scope, Session(engine) as session:
            list_customers(session)
    print(f"{scope.query_count} queries in the last request; findings:")
    for finding in scope.findings:
        print(finding.describe())
    profiler.print_report()
