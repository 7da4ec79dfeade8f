"""A small shop schema for observe's tests: users -> orders -> items, orders -> user."""

from __future__ import annotations

from sqlalchemy import ForeignKey, String
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(AsyncAttrs, DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    orders: Mapped[list[Order]] = relationship(back_populates="user", order_by="Order.id")


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    user: Mapped[User] = relationship(back_populates="orders")
    items: Mapped[list[Item]] = relationship(order_by="Item.id")


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    sku: Mapped[str] = mapped_column(String(20))


USERS, ORDERS_PER_USER, ITEMS_PER_ORDER = 5, 3, 2


def seed_rows() -> list[Base]:
    rows: list[Base] = []
    for u in range(1, USERS + 1):
        user = User(id=u, name=f"user{u}")
        rows.append(user)
        for o in range(ORDERS_PER_USER):
            order = Order(id=u * 100 + o, user=user)
            order.items = [
                Item(id=order.id * 10 + i, sku=f"sku{i}") for i in range(ITEMS_PER_ORDER)
            ]
            rows.append(order)
    return rows
