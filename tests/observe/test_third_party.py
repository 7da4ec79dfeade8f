"""observe on third-party patterns (nplusone's test scenarios, SQLAlchemy's examples/), on
real PostgreSQL: listeners never raise into the ORM, N+1s behind reloads and inheritance
are found, every printed fix is run and removes the N+1, and the ORM's own work is no
finding."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from sqlalchemy import Engine, Select, create_engine, delete, select, text
from sqlalchemy.orm import (
    Session,
    joinedload,
    merge_frozen_result,
    selectin_polymorphic,
    selectinload,
    undefer,
    with_polymorphic,
)

from hotpath.observe import Finding, FindingKind, Profiler
from hotpath.observe._scope import Scope
from hotpath.testing import ModuleDatabase

from .models_third_party import (
    ARTICLES,
    COMMENTS_EACH,
    ENGINEERS,
    PROJECTS_EACH,
    TRAILERS_EACH,
    TREE_DEPTH,
    TREE_FANOUT,
    Article,
    Comment,
    Employee,
    Engineer,
    Node,
    Project,
    TPBase,
    Trailer,
    Truck,
    Vehicle,
    seed_third_party,
)

DETECTORS = ("n_plus_one", "duplicate", "unused_eager_load")
TREE_NODES = sum(TREE_FANOUT**level for level in range(TREE_DEPTH + 1))


@pytest.fixture(scope="module")
def tp_engine(engine: Engine) -> Engine:
    TPBase.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(seed_third_party())
        session.commit()
        # seeded with explicit keys: new rows take theirs from after them
        session.execute(text("SELECT setval('tp_nodes_id_seq', (SELECT max(id) FROM tp_nodes))"))
        session.commit()
    return engine


@pytest.fixture
def profiler(tp_engine: Engine) -> Iterator[Profiler]:
    profiler = Profiler(tp_engine, modes=dict.fromkeys(DETECTORS, "log"))
    yield profiler
    profiler.uninstrument()


def of_kind(findings: list[Finding], kind: FindingKind) -> list[Finding]:
    return [f for f in findings if f.kind is kind]


def apply_fix(statement: Select[Any], finding: Finding) -> Select[Any]:
    """The statement with the finding's printed ``.options(...)`` applied, as a user would
    paste it."""
    assert finding.fix is not None
    assert finding.fix.startswith(".options(")
    code = finding.fix.split("  # ")[0]
    names = {
        "selectinload": selectinload,
        "joinedload": joinedload,
        "selectin_polymorphic": selectin_polymorphic,
        "undefer": undefer,
        "with_polymorphic": with_polymorphic,
        **{cls.__name__: cls for cls in (Article, Comment, Employee, Engineer, Node)},
        **{cls.__name__: cls for cls in (Project, Trailer, Truck, Vehicle)},
    }
    fixed: Select[Any] = eval(f"statement{code}", names, {"statement": statement})
    return fixed


# -- item 15: a listener never raises into the application's ORM call -----------------------


def lazy_n_plus_one(session: Session) -> None:
    for article in session.scalars(select(Article)):
        _ = article.comments


def test_merge_without_load_after_a_lazy_load(profiler: Profiler, tp_engine: Engine) -> None:
    # the first lazy load makes the profiler listen to the mapper `load` event, which
    # merge(load=False) and merge_frozen_result(load=False) dispatch with no query context
    with profiler.scope("warm") as scope, Session(tp_engine) as session:
        lazy_n_plus_one(session)
    assert len(of_kind(scope.findings, FindingKind.N_PLUS_ONE)) == 1
    assert profiler._load_listening
    with Session(tp_engine) as source:
        articles = source.scalars(select(Article).order_by(Article.id)).all()
        frozen = source.execute(select(Article).order_by(Article.id)).freeze()

    for inside in (True, False):
        with Session(tp_engine) as target:
            if inside:
                with profiler.scope("merge") as merged:
                    copies = [target.merge(a, load=False) for a in articles]
                assert merged.findings == []
            else:
                copies = [target.merge(a, load=False) for a in articles]
            assert [c.title for c in copies] == [a.title for a in articles]
        with Session(tp_engine) as target:
            statement = select(Article).order_by(Article.id)
            result = merge_frozen_result(target, statement, frozen, load=False)  # type: ignore[no-untyped-call]
            assert [a.id for a in result().scalars()] == list(range(1, ARTICLES + 1))


def test_a_listener_bug_is_logged_once_and_never_raised(
    profiler: Profiler, tp_engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug in observe")

    monkeypatch.setattr(Scope, "_record_query", broken)
    monkeypatch.setattr(Scope, "_note_lazy_load", broken)
    monkeypatch.setattr("hotpath.observe._scope._failed_listeners", set(), raising=False)
    caplog.set_level(logging.ERROR, logger="hotpath.observe")
    with profiler.scope("broken"), Session(tp_engine) as session:
        for article in session.scalars(select(Article)):
            assert len(article.comments) == COMMENTS_EACH  # the application's calls go on
    failed = [r for r in caplog.records if "listener failed" in r.getMessage()]
    assert len(failed) == 2  # one per broken listener, not one per call
    assert {"_statement", "_on_orm_execute"} == {r.args[0] for r in failed}


# -- item 16: parents reloaded one by one are still one result ------------------------------


def test_joined_inheritance_subclass_columns_then_a_lazy_load(
    profiler: Profiler, tp_engine: Engine
) -> None:
    statement = select(Employee).order_by(Employee.id)

    def loop(statement: Select[Any]) -> Scope:
        with profiler.scope("engineers") as scope, Session(tp_engine) as session:
            for employee in session.scalars(statement):
                if isinstance(employee, Engineer):  # SQLAlchemy's examples/inheritance
                    assert employee.language == "python"
                    assert len(employee.projects) == PROJECTS_EACH
        return scope

    scope = loop(statement)
    found = of_kind(scope.findings, FindingKind.N_PLUS_ONE)
    [columns] = [f for f in found if "columns" in f.details]
    [projects] = [f for f in found if f.details.get("relationship") == "Engineer.projects"]
    assert columns.details["reason"] == "subclass"
    assert columns.count == ENGINEERS
    assert columns.fix == (
        ".options(selectin_polymorphic(Employee, [Engineer]))  # on the select() of Employee"
    )
    assert projects.count == ENGINEERS
    assert projects.fix == (
        ".options(selectin_polymorphic(Employee, [Engineer]), selectinload(Engineer.projects))"
        "  # on the select() of Employee"
    )
    fixed = loop(apply_fix(statement, projects))
    assert of_kind(fixed.findings, FindingKind.N_PLUS_ONE) == []
    assert fixed.query_count == 3  # employees, engineers' columns, their projects


def test_deferred_column_read_before_a_lazy_load(profiler: Profiler, tp_engine: Engine) -> None:
    def loop(statement: Select[Any]) -> Scope:
        with profiler.scope("articles") as scope, Session(tp_engine) as session:
            for article in session.scalars(statement):
                assert article.body
                assert len(article.comments) == COMMENTS_EACH
        return scope

    statement = select(Article)
    scope = loop(statement)
    found = of_kind(scope.findings, FindingKind.N_PLUS_ONE)
    [body] = [f for f in found if "columns" in f.details]
    [comments] = [f for f in found if f.details.get("relationship") == "Article.comments"]
    assert (body.details["reason"], body.count, comments.count) == ("deferred", ARTICLES, ARTICLES)
    assert body.fix == ".options(undefer(Article.body))  # on the select() of Article"
    fixed = loop(apply_fix(apply_fix(statement, body), comments))
    assert of_kind(fixed.findings, FindingKind.N_PLUS_ONE) == []
    assert fixed.query_count == 2


def test_commit_inside_the_loop(profiler: Profiler, tp_engine: Engine) -> None:
    with profiler.scope("commit") as scope, Session(tp_engine) as session:
        for article in session.scalars(select(Article)):
            assert len(article.comments) == COMMENTS_EACH
            session.commit()  # expires every article: each reloads itself before its load
    found = of_kind(scope.findings, FindingKind.N_PLUS_ONE)
    [comments] = [f for f in found if f.details.get("relationship") == "Article.comments"]
    [expired] = [f for f in found if "columns" in f.details]
    assert comments.count == ARTICLES
    assert expired.details["reason"] == "expired"
    assert expired.count == ARTICLES - 1  # the first article was read before any commit
    assert expired.fix is not None
    assert "expire_on_commit=False" in expired.fix


def test_selectin_loaded_rows_loading_deferred_columns_one_by_one(
    profiler: Profiler, tp_engine: Engine
) -> None:
    def loop(statement: Select[Any]) -> Scope:
        with profiler.scope("notes") as scope, Session(tp_engine) as session:
            for article in session.scalars(statement):
                for comment in article.comments:
                    assert comment.note == ""
        return scope

    statement = select(Article).options(selectinload(Article.comments))
    scope = loop(statement)
    [note] = of_kind(scope.findings, FindingKind.N_PLUS_ONE)
    assert {k: note.details[k] for k in ("columns", "reason", "parents")} == {
        "columns": ["note"],
        "reason": "deferred",
        "parents": 10,
    }
    assert note.details["missing_index"] is False  # no plan taken: no index evidence
    assert note.details["total_ms"] > 0
    assert note.fix == (
        ".options(selectinload(Article.comments).options(undefer(Comment.note)))"
        "  # on the select() of Article"
    )
    fixed = loop(apply_fix(select(Article), note))
    assert fixed.findings == []
    assert fixed.query_count == 2


# -- item 17: the printed fix works on the statement the user ran ---------------------------


def test_single_table_inheritance_fix_works_on_the_base_select(
    profiler: Profiler, tp_engine: Engine
) -> None:
    def loop(statement: Select[Any]) -> Scope:
        with profiler.scope("vehicles") as scope, Session(tp_engine) as session:
            for vehicle in session.scalars(statement):
                if isinstance(vehicle, Truck):
                    assert len(vehicle.trailers) == TRAILERS_EACH
        return scope

    statement = select(Vehicle)
    [finding] = of_kind(loop(statement).findings, FindingKind.N_PLUS_ONE)
    assert finding.fix == (
        ".options(selectin_polymorphic(Vehicle, [Truck]), selectinload(Truck.trailers))"
        "  # on the select() of Vehicle"
    )
    # the old advice, applied to the statement the user ran, is silently ignored
    ignored = loop(statement.options(selectinload(Truck.trailers)))
    assert len(of_kind(ignored.findings, FindingKind.N_PLUS_ONE)) == 1
    fixed = loop(apply_fix(statement, finding))
    assert of_kind(fixed.findings, FindingKind.N_PLUS_ONE) == []
    assert fixed.query_count == 3


def test_recursive_tree_walk_is_one_finding_with_recursion_depth(
    profiler: Profiler, tp_engine: Engine
) -> None:
    def walk(node: Node) -> int:
        return 1 + sum(walk(child) for child in node.children)  # examples/adjacency_list

    def run(statement: Select[Any]) -> Scope:
        with profiler.scope("tree") as scope, Session(tp_engine) as session:
            assert walk(session.scalars(statement).one()) == TREE_NODES
        return scope

    statement = select(Node).where(Node.id == 1)
    [finding] = of_kind(run(statement).findings, FindingKind.N_PLUS_ONE)
    assert finding.count == TREE_NODES - 1  # every node's children but the root's
    assert finding.fix == (
        f".options(selectinload(Node.children, recursion_depth={TREE_DEPTH + 1}))"
        "  # on the select() of Node"
    )
    fixed = run(apply_fix(statement, finding))
    assert fixed.findings == []
    assert fixed.query_count == TREE_DEPTH + 2  # the root, then one query per level


# -- item 18: no false positives -------------------------------------------------------------


def test_engines_not_given_to_the_profiler_are_not_judged(
    profiler: Profiler, tp_engine: Engine, hotpath_db: ModuleDatabase
) -> None:
    other = create_engine(hotpath_db.url)
    try:
        with profiler.scope("other engine") as scope:
            with Session(other) as session:
                lazy_n_plus_one(session)
                session.scalars(select(Article).options(selectinload(Article.comments))).all()
            assert scope.query_count == 0
        assert scope.findings == []
        with profiler.scope("own engine") as scope, Session(tp_engine) as session:
            lazy_n_plus_one(session)
        assert len(of_kind(scope.findings, FindingKind.N_PLUS_ONE)) == 1
    finally:
        other.dispose()


def test_the_unit_of_work_is_not_an_n_plus_one(profiler: Profiler, tp_engine: Engine) -> None:
    # examples/adjacency_list: a self-referential chain is inserted level by level (each row's
    # key is the next one's parent_id) and deleted by cascade, level by level; and a batched
    # INSERT of many rows runs page by page: all of it inside Session.flush
    def chain(length: int) -> Node:
        return Node(children=[chain(length - 1)] if length > 1 else [])

    levels, many = 8, 5_500
    with profiler.scope("flush") as scope, Session(tp_engine) as session:
        top = chain(levels)
        session.add(top)
        session.add_all(Node() for _ in range(many))
        session.commit()
        top_id = top.id
    with profiler.scope("cascade") as cascade, Session(tp_engine) as session:
        query = select(Node).where(Node.id == top_id)
        loaded = query.options(selectinload(Node.children, recursion_depth=levels))
        session.delete(session.scalars(loaded).one())
        session.commit()
    with Session(tp_engine) as session, session.begin():
        session.execute(delete(Node).where(Node.id > top_id))
    assert scope.query_count >= levels + many // 1000  # an INSERT per level, per page
    assert cascade.query_count >= levels  # a DELETE per level
    # the delete cascade read every selectin-loaded collection: that eager load was used
    judged = (FindingKind.N_PLUS_ONE, FindingKind.DUPLICATE, FindingKind.UNUSED_EAGER_LOAD)
    assert [f for f in scope.findings + cascade.findings if f.kind in judged] == []


def test_refresh_after_commit_is_not_a_duplicate(profiler: Profiler, tp_engine: Engine) -> None:
    with profiler.scope("refresh") as scope, Session(tp_engine) as session:
        article = session.get(Article, 1)
        assert article is not None
        session.commit()
        session.refresh(article)
        session.refresh(article)
    assert scope.query_count == 3
    assert scope.findings == []


def test_one_loop_over_two_results_is_one_finding(profiler: Profiler, tp_engine: Engine) -> None:
    def render(articles: Sequence[Article]) -> int:
        return sum(len(article.comments) for article in articles)

    with profiler.scope("two results") as scope, Session(tp_engine) as session:
        first = session.scalars(select(Article).where(Article.id <= 2)).all()
        rest = session.scalars(select(Article).where(Article.id > 2)).all()
        assert render(first) + render(rest) == ARTICLES * COMMENTS_EACH
    [finding] = of_kind(scope.findings, FindingKind.N_PLUS_ONE)
    assert finding.count == ARTICLES
    assert finding.details["parents"] == ARTICLES


# -- observe leftovers: duplicates -----------------------------------------------------------


def test_repeated_writes_and_nextval_are_not_duplicates(
    profiler: Profiler, tp_engine: Engine
) -> None:
    with profiler.scope("writes") as scope, tp_engine.begin() as conn:
        for _ in range(3):
            conn.execute(text("UPDATE tp_articles SET title = title WHERE id = :id"), {"id": 1})
            conn.execute(text("SELECT nextval('tp_nodes_id_seq')"))
            conn.execute(text("SELECT title FROM tp_articles WHERE id = :id"), {"id": 1})
    [duplicate] = of_kind(scope.findings, FindingKind.DUPLICATE)  # the plain SELECT only
    assert duplicate.sql is not None
    assert duplicate.sql.startswith("SELECT title")
    assert duplicate.count == 3


def test_duplicate_bookkeeping_is_bounded_in_a_long_scope(
    profiler: Profiler, tp_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    bound = 50
    monkeypatch.setattr("hotpath.observe._scope._MAX_DUPLICATE_KEYS", bound, raising=False)
    statement = text("SELECT CAST(:n AS int)")
    with profiler.scope("long") as scope, tp_engine.connect() as conn:
        for n in range(bound * 3):  # distinct parameters: nothing to remember past the bound
            conn.execute(statement, {"n": n})
        conn.execute(statement, {"n": 0})  # seen before the bound: still a duplicate
    assert len(scope._duplicates) == bound
    [duplicate] = of_kind(scope.findings, FindingKind.DUPLICATE)
    assert duplicate.count == 2
