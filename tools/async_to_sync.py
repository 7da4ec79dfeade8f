#!/usr/bin/env python
"""Write hotpath's sync twins from their async sources (the psycopg 3 way).

    python tools/async_to_sync.py          # regenerate every twin (``make generate``)
    python tools/async_to_sync.py --check  # exit 1 if a generated file is stale (``make lint``)

The async module is the one source: ``async def`` becomes ``def``, ``await x`` becomes ``x``,
``async with``/``async for`` become ``with``/``for``, names are renamed by ``NAMES`` (also in
docstrings and comments), ``Awaitable[X]`` becomes ``X``, ``await ensure_async(f, ...)`` becomes
``f(...)``, and what is async-only is marked: a block under ``if True:  # ASYNC`` (its
``else:`` branch, if any, is what the sync twin runs), or the one statement right after an own
line ``# ASYNC: why`` comment (for definitions, such as overloads, that mypy wants unguarded).

What really differs between the twins (threads or tasks, locks or events) is named in each
package's ``_acompat.py``, which holds both sides.

The output is formatted by ruff (imports sorted, unused ones dropped, ``ruff format``).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import itertools
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import ast_comments  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent

# async source -> its sync twin (relative to the repository root), and the names renamed in
# that file only, on top of NAMES
TWINS: dict[str, tuple[str, dict[str, str]]] = {
    "src/hotpath/cache/_async.py": ("src/hotpath/cache/_sync.py", {}),
    "src/hotpath/routing/_async_reads.py": (
        "src/hotpath/routing/_reads.py",
        # the sessions of both sets check tokens through the nodes' sync engines
        {"engine": "bind"},
    ),
    "src/hotpath/pool/_psycopg_async.py": ("src/hotpath/pool/_psycopg_sync.py", {}),
    "src/hotpath/routing/_async_replica_set.py": (
        "src/hotpath/routing/_replica_set.py",
        {"_tasks": "_threads"},
    ),
}

# async name -> sync name: identifiers, attributes, imported names, and whole words in
# docstrings and comments.
NAMES: dict[str, str] = {
    # asyncio protocol
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__aiter__": "__iter__",
    "__anext__": "__next__",
    "AsyncIterator": "Iterator",
    "AsyncGenerator": "Generator",
    "asynccontextmanager": "contextmanager",
    "aclose": "close",
    # the compat layers (cache/_acompat.py)
    "AEvent": "Event",
    "AFlight": "Flight",
    "ARefresher": "Refresher",
    "AChannel": "Channel",
    "ALoader": "Loader",
    "AREDIS_FAILURES": "REDIS_FAILURES",
    "ARedisCluster": "RedisCluster",
    "wait_at_most": "wait",
    # SQLAlchemy
    "AsyncEngine": "Engine",
    "AsyncConnection": "Connection",
    "create_async_engine": "create_engine",
    # the compat layers (routing/_acompat.py)
    "AStop": "Stop",
    "AWorker": "Worker",
    "aspawn": "spawn",
    "astop_workers": "stop_workers",
    "aprobe_all": "probe_all",
    "awithin": "within",
    "aconnection_of": "connection_of",
    "acheck_engines": "check_engines",
    "abind_of": "bind_of",
    "APROBE_TIMEOUTS": "PROBE_TIMEOUTS",
    # hotpath's own twins
    "AsyncCache": "Cache",
    "AsyncClient": "SyncClient",
    "async_client": "sync_client",
    "AsyncReplicaSet": "ReplicaSet",
    "AsyncMeteredConnectionPool": "MeteredConnectionPool",
    "AsyncConnectionPool": "ConnectionPool",
    "TimedAsyncConnection": "TimedConnection",
    "_timed_async_connection_class": "_timed_connection_class",
    "_adetach_and_close": "_detach_and_close",
    "aroute_read": "route_read",
    "acap_token": "cap_token",
    "_async_reads": "_reads",
}

# modules whose sync names live elsewhere
MODULES: dict[str, str] = {"sqlalchemy.ext.asyncio": "sqlalchemy"}

# imports of async-only helpers that the sync twin does without
SKIP_IMPORTS: dict[str, set[str]] = {"_acompat": {"ensure_async"}}

HEADER = (
    "# Generated from {source} by tools/async_to_sync.py: do not edit.\n"
    "# Change the async source and run `make generate` (docs/contributing.md).\n"
)

_WORD = re.compile(r"\b(" + "|".join(re.escape(n) for n in NAMES) + r")\b")


def _rename_words(text: str) -> str:
    return _WORD.sub(lambda m: NAMES[m.group(1)], text)


def _is_async_marker(node: ast.AST) -> bool:
    return isinstance(node, ast_comments.Comment) and node.value.startswith("# ASYNC")


class DropAsyncOnly(ast.NodeTransformer):
    """The statement after an own-line ``# ASYNC`` comment is async-only: dropped, with it."""

    def generic_visit(self, node: ast.AST) -> ast.AST:
        for field in ("body", "orelse", "finalbody"):
            statements = getattr(node, field, None)
            if isinstance(statements, list):
                setattr(node, field, self._kept(statements))
        return super().generic_visit(node)

    @staticmethod
    def _kept(statements: list[ast.stmt]) -> list[ast.stmt]:
        kept: list[ast.stmt] = []
        dropping = False
        for statement in statements:
            if isinstance(statement, ast_comments.Comment):
                if not statement.inline and _is_async_marker(statement):
                    dropping = True
                    continue
                if dropping:  # the comments between the marker and its statement go too
                    continue
            elif dropping:
                dropping = False
                continue
            kept.append(statement)
        return kept


class AsyncToSync(ast.NodeTransformer):
    """The syntax: async constructs become their sync forms."""

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        new = ast.FunctionDef(**{f: getattr(node, f) for f in node._fields})
        ast.copy_location(new, node)
        return self.visit(new)  # type: ignore[no-any-return]

    def visit_AsyncWith(self, node: ast.AsyncWith) -> ast.AST:
        new = ast.With(**{f: getattr(node, f) for f in node._fields})
        ast.copy_location(new, node)
        return self.visit(new)  # type: ignore[no-any-return]

    def visit_AsyncFor(self, node: ast.AsyncFor) -> ast.AST:
        new = ast.For(**{f: getattr(node, f) for f in node._fields})
        ast.copy_location(new, node)
        return self.visit(new)  # type: ignore[no-any-return]

    def visit_Await(self, node: ast.Await) -> ast.AST:
        value = node.value
        # await ensure_async(f, *args) -> f(*args): a sync callable is simply called
        if (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Name)
            and value.func.id == "ensure_async"
        ):
            value.func = value.args.pop(0)
        return self.visit(value)  # type: ignore[no-any-return]

    def visit_comprehension(self, node: ast.comprehension) -> ast.AST:
        node.is_async = 0
        self.generic_visit(node)
        return node

    def visit_If(self, node: ast.If) -> Any:
        # `if True:  # ASYNC ...`: the body is async-only; the sync twin keeps the else branch.
        if (
            isinstance(node.test, ast.Constant)
            and node.test.value is True
            and node.body
            and _is_async_marker(node.body[0])
        ):
            return [self.visit(child) for child in node.orelse]
        self.generic_visit(node)
        return node

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        # Awaitable[X] -> X
        if isinstance(node.value, ast.Name) and node.value.id == "Awaitable":
            return self.visit(node.slice)  # type: ignore[no-any-return]
        self.generic_visit(node)
        return node


class Rename(ast.NodeTransformer):
    """The names: ``names`` applied to identifiers and imports, NAMES to whole words in
    docstrings and comments, MODULES to the modules imported from."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names

    def visit_Name(self, node: ast.Name) -> ast.AST:
        node.id = self.names.get(node.id, node.id)
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        node.attr = self.names.get(node.attr, node.attr)
        self.generic_visit(node)
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.arg = self.names.get(node.arg, node.arg)
        self.generic_visit(node)
        return node

    def visit_keyword(self, node: ast.keyword) -> ast.AST:
        if node.arg is not None:
            node.arg = self.names.get(node.arg, node.arg)
        self.generic_visit(node)
        return node

    def _named(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> ast.AST:
        node.name = self.names.get(node.name, node.name)
        self._docstring(node.body)
        self.generic_visit(node)
        return node

    visit_FunctionDef = _named
    visit_AsyncFunctionDef = _named
    visit_ClassDef = _named

    def visit_Module(self, node: ast.Module) -> ast.AST:
        # The module docstring is kept as written: it describes the pair, under the header
        # that says which file is generated from which.
        self.generic_visit(node)
        return node

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST | None:
        module = node.module or ""
        skipped = SKIP_IMPORTS.get(module.rsplit(".", 1)[-1], set())
        node.names = [alias for alias in node.names if alias.name not in skipped]
        if not node.names:
            return None
        if node.module is not None:
            module = MODULES.get(node.module, node.module)
            node.module = ".".join(self.names.get(part, part) for part in module.split("."))
        for alias in node.names:
            alias.name = self.names.get(alias.name, alias.name)
        return node

    def visit_Comment(self, node: Any) -> Any:
        node.value = _rename_words(node.value)
        return node

    @staticmethod
    def _docstring(body: list[ast.stmt]) -> None:
        first = body[0] if body else None
        if (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)
        ):
            first.value.value = _rename_words(first.value.value)


class BlankLines(ast.NodeTransformer):
    """Keep the source's blank lines between statements (the AST forgets them)."""

    def generic_visit(self, node: ast.AST) -> ast.AST:
        for field in ("body", "orelse", "finalbody"):
            statements = getattr(node, field, None)
            if isinstance(statements, list) and statements:
                setattr(node, field, self._with_blanks(statements))
        return super().generic_visit(node)

    @staticmethod
    def _with_blanks(statements: list[ast.stmt]) -> list[ast.stmt]:
        kept = [statements[0]]
        for before, after in itertools.pairwise(statements):
            end = getattr(before, "end_lineno", None)
            start = getattr(after, "lineno", None)
            decorators = getattr(after, "decorator_list", None)
            if decorators:
                start = min(start or 0, *(d.lineno for d in decorators))
            if end is not None and start is not None and start - end > 1:
                blank = ast_comments.Comment(value="", inline=False)
                blank.lineno = blank.end_lineno = end + 1
                blank.col_offset = blank.end_col_offset = 0
                kept.append(blank)
            kept.append(after)
        return kept


_TUPLE = ast._Precedence.TUPLE  # type: ignore[attr-defined]


class _Unparser(ast_comments._Unparser):  # type: ignore[misc]
    """Long strings as implicitly joined pieces, which ruff format can wrap (unparse writes
    each as one literal, however long)."""

    PIECE = 60

    # `return a, b` and `a, b = c, d` without the parentheses unparse would add
    def visit_Return(self, node: ast.Return) -> None:
        self._bare(node.value)
        super().visit_Return(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        for part in [*node.targets, node.value]:
            self._bare(part)
        super().visit_Assign(node)

    def _bare(self, node: ast.expr | None) -> None:
        if isinstance(node, ast.Tuple) and not any(isinstance(e, ast.Starred) for e in node.elts):
            self.set_precedence(_TUPLE, node)

    def _write_constant(self, value: Any) -> None:
        if isinstance(value, str) and len(value) > self.PIECE:
            words = re.split(r"(?<= )", value)
            pieces, piece = [], ""
            for word in words:
                if piece and len(piece) + len(word) > self.PIECE:
                    pieces.append(piece)
                    piece = ""
                piece += word
            pieces.append(piece)
            self.write("(" + " ".join(repr(p) for p in pieces) + ")")
        else:
            super()._write_constant(value)


def _ruff(args: list[str], source: str, target: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--stdin-filename", str(target), "-"],
        input=source,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"ruff {' '.join(args)} failed on {target}:\n{done.stderr}")
    return done.stdout


def generate(source: Path, target: Path, names: dict[str, str]) -> str:
    """The sync twin of ``source``, as it should stand at ``target``; ``names`` on top of
    NAMES."""
    tree = ast_comments.parse(source.read_text(), filename=str(source))
    tree = DropAsyncOnly().visit(tree)
    tree = BlankLines().visit(tree)
    tree = AsyncToSync().visit(tree)
    tree = Rename({**NAMES, **names}).visit(tree)
    code = HEADER.format(source=source.relative_to(ROOT)) + _Unparser().visit(tree) + "\n"
    code = _ruff(["check", "--fix", "--exit-zero", "--quiet", "--select", "I,F401"], code, target)
    return _ruff(["format", "--quiet"], code, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a twin is stale"
    )
    args = parser.parse_args(argv)
    stale = []
    for source_name, (target_name, names) in TWINS.items():
        source, target = ROOT / source_name, ROOT / target_name
        wanted = generate(source, target, names)
        current = target.read_text() if target.exists() else ""
        if wanted == current:
            continue
        if args.check:
            stale.append(target_name)
            sys.stdout.writelines(
                difflib.unified_diff(
                    current.splitlines(keepends=True),
                    wanted.splitlines(keepends=True),
                    target_name,
                    f"{target_name} (generated from {source_name})",
                )
            )
        else:
            target.write_text(wanted)
            print(f"wrote {target_name}")
    if stale:
        print(
            f"\n{len(stale)} generated file(s) stale: {', '.join(stale)}. Edit the async "
            "source, not its sync twin, then run `make generate`.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
