"""A small shop schema shared by the benchmarks that need ORM models."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import Engine, ForeignKey, Numeric, String, insert
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "bench_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    orders: Mapped[list[Order]] = relationship(back_populates="user")


class Order(Base):
    __tablename__ = "bench_orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("bench_users.id"), index=True)
    total: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    user: Mapped[User] = relationship(back_populates="orders")


def seed(engine: Engine, users: int, orders_per_user: int) -> None:
    with engine.begin() as conn:
        conn.execute(insert(User), [{"id": i, "name": f"user{i}"} for i in range(1, users + 1)])
        conn.execute(
            insert(Order),
            [
                {"user_id": u, "total": Decimal(o) + Decimal("0.99")}
                for u in range(1, users + 1)
                for o in range(orders_per_user)
            ],
        )
