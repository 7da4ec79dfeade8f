"""Schemas of the third-party patterns observe was tried on (nplusone's test scenarios,
SQLAlchemy's own examples/): inheritance of both kinds, deferred columns, a tree, cascades."""

from __future__ import annotations

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class TPBase(DeclarativeBase):
    pass


# joined-table inheritance (SQLAlchemy's examples/inheritance/joined.py): an Engineer's own
# columns live in a second table that select(Employee) does not read
class Employee(TPBase):
    __tablename__ = "tp_employees"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    type: Mapped[str] = mapped_column(String(20))
    __mapper_args__ = {  # noqa: RUF012 - mapper config
        "polymorphic_on": "type",
        "polymorphic_identity": "employee",
    }


class Engineer(Employee):
    __tablename__ = "tp_engineers"
    id: Mapped[int] = mapped_column(ForeignKey("tp_employees.id"), primary_key=True)
    language: Mapped[str] = mapped_column(String(20))
    projects: Mapped[list[Project]] = relationship(order_by="Project.id")
    __mapper_args__ = {"polymorphic_identity": "engineer"}  # noqa: RUF012 - mapper config


class Project(TPBase):
    __tablename__ = "tp_projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    engineer_id: Mapped[int] = mapped_column(ForeignKey("tp_engineers.id"))
    title: Mapped[str] = mapped_column(String(40))


# single-table inheritance: Truck's relationship is invisible on Vehicle
class Vehicle(TPBase):
    __tablename__ = "tp_vehicles"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    __mapper_args__ = {  # noqa: RUF012 - mapper config
        "polymorphic_on": "kind",
        "polymorphic_identity": "vehicle",
    }


class Truck(Vehicle):
    trailers: Mapped[list[Trailer]] = relationship(order_by="Trailer.id")
    __mapper_args__ = {"polymorphic_identity": "truck"}  # noqa: RUF012 - mapper config


class Trailer(TPBase):
    __tablename__ = "tp_trailers"
    id: Mapped[int] = mapped_column(primary_key=True)
    truck_id: Mapped[int] = mapped_column(ForeignKey("tp_vehicles.id"))


# a deferred column (a large body) and a collection
class Article(TPBase):
    __tablename__ = "tp_articles"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(40))
    body: Mapped[str] = mapped_column(Text, deferred=True)
    comments: Mapped[list[Comment]] = relationship(
        order_by="Comment.id", cascade="all, delete-orphan"
    )


class Comment(TPBase):
    __tablename__ = "tp_comments"
    id: Mapped[int] = mapped_column(primary_key=True)
    article_id: Mapped[int] = mapped_column(ForeignKey("tp_articles.id"))
    text: Mapped[str] = mapped_column(String(40))
    note: Mapped[str] = mapped_column(Text, deferred=True, default="")


# a self-referential tree (SQLAlchemy's examples/adjacency_list)
class Node(TPBase):
    __tablename__ = "tp_nodes"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("tp_nodes.id"))
    children: Mapped[list[Node]] = relationship(order_by="Node.id", cascade="all, delete-orphan")


ENGINEERS, PROJECTS_EACH = 4, 2
TRUCKS, CARS, TRAILERS_EACH = 4, 2, 2
ARTICLES, COMMENTS_EACH = 5, 2
TREE_FANOUT, TREE_DEPTH = 3, 3  # a root, 3 children, 9 grandchildren, 27 leaves


def seed_third_party() -> list[TPBase]:
    rows: list[TPBase] = [Employee(id=1, name="boss")]
    for e in range(2, 2 + ENGINEERS):
        engineer = Engineer(id=e, name=f"eng{e}", language="python")
        engineer.projects = [Project(id=e * 10 + p, title=f"p{p}") for p in range(PROJECTS_EACH)]
        rows.append(engineer)
    for t in range(1, TRUCKS + 1):
        truck = Truck(id=t)
        truck.trailers = [Trailer(id=t * 10 + i) for i in range(TRAILERS_EACH)]
        rows.append(truck)
    rows += [Vehicle(id=100 + c) for c in range(CARS)]
    for a in range(1, ARTICLES + 1):
        article = Article(id=a, title=f"a{a}", body="x" * 100)
        article.comments = [Comment(id=a * 10 + c, text=f"c{c}") for c in range(COMMENTS_EACH)]
        rows.append(article)
    next_id = iter(range(1, 10_000))

    def grow(depth: int) -> Node:
        node = Node(id=next(next_id))
        if depth < TREE_DEPTH:
            node.children = [grow(depth + 1) for _ in range(TREE_FANOUT)]
        return node

    rows.append(grow(0))
    return rows
