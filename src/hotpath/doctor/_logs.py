"""The advisor's workload from PostgreSQL log files: stderr, csvlog or jsonlog.

With ``log_min_duration_statement`` set, PostgreSQL logs each statement that ran at least that
long as ``duration: 12.3 ms  statement: SELECT …`` (simple protocol) or
``duration: 12.3 ms  execute <name>: SELECT … $1 …`` (extended protocol). Statements of one
shape (pglast fingerprint: same statement, other constants) become one
:class:`~._workload.WorkloadQuery`, with their count as calls and their mean duration; the
first text seen stands for the shape, constants included, which plan better than ``$n``.
auto_explain's ``duration: … plan:`` entries and parse/bind steps are not statements and are
skipped.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import orjson

from ._errors import DoctorError
from ._sources import advisable, statement_shape
from ._workload import WorkloadQuery

_DURATION = re.compile(
    r"duration: (?P<ms>\d+(?:\.\d+)?) ms\s+(?:statement|execute [^:]*): (?P<sql>.*)", re.DOTALL
)
# a stderr line that begins an entry: whatever log_line_prefix wrote, then "SEVERITY:  "
_ENTRY = re.compile(
    r"^(?P<prefix>.*?)\b(?P<level>LOG|DETAIL|STATEMENT|HINT|CONTEXT|ERROR|"
    r"WARNING|NOTICE|INFO|FATAL|PANIC|DEBUG\d?):  (?P<message>.*)$"
)
_CSV_MESSAGE = 13  # csvlog column of the message (0-based), stable since PostgreSQL 9.0
_CSV_DATABASE = 2


class LogFormat(str, Enum):
    stderr = "stderr"
    csvlog = "csvlog"
    jsonlog = "jsonlog"


@dataclass(frozen=True)
class LogEntry:
    message: str
    database: str | None = None


def detect_format(path: Path) -> LogFormat:
    """csvlog for ``.csv``, jsonlog for ``.json`` or a file of JSON lines, else stderr."""
    if path.suffix == ".csv":
        return LogFormat.csvlog
    if path.suffix == ".json":
        return LogFormat.jsonlog
    with path.open(errors="replace") as file:
        for line in file:
            if line.strip():
                return LogFormat.jsonlog if line.lstrip().startswith("{") else LogFormat.stderr
    return LogFormat.stderr


def from_log_files(
    paths: Iterable[str | Path],
    *,
    database: str | None = None,
    log_format: LogFormat | None = None,
) -> list[WorkloadQuery]:
    """Timed statements of PostgreSQL log files, grouped by shape, heaviest first.
    ``database`` keeps only entries of that database (csvlog and jsonlog name it; stderr
    entries only when ``log_line_prefix`` holds ``%d``, so they are all kept)."""
    shapes: dict[str, tuple[str, int, float]] = {}
    for raw in paths:
        path = Path(raw)
        try:
            fmt = log_format or detect_format(path)
            entries = list(_read(path, fmt))
        except OSError as exc:
            raise DoctorError(f"cannot read log file {path}: {exc.strerror}") from None
        except (csv.Error, orjson.JSONDecodeError) as exc:
            raise DoctorError(
                f"log file {path} is not {fmt.value} ({exc}): give --log-format stderr, "
                "csvlog or jsonlog"
            ) from None
        for entry in entries:
            if database is not None and entry.database not in (None, database):
                continue
            match = _DURATION.match(entry.message)
            if match is None:
                continue
            sql = match["sql"].strip().rstrip(";").strip()
            if not advisable(sql):
                continue  # DDL, EXPLAIN (the advisor's own), catalog queries
            key = statement_shape(sql)
            first, calls, total = shapes.get(key, (sql, 0, 0.0))
            shapes[key] = (first, calls + 1, total + float(match["ms"]))
    found = [
        WorkloadQuery(sql, calls, total / calls, "log") for sql, calls, total in shapes.values()
    ]
    found.sort(key=lambda q: -(q.weight or 0.0))
    return found


def _read(path: Path, fmt: LogFormat) -> Iterator[LogEntry]:
    if fmt is LogFormat.csvlog:
        with path.open(newline="", errors="replace") as file:
            for row in csv.reader(file):
                if len(row) > _CSV_MESSAGE:
                    yield LogEntry(row[_CSV_MESSAGE], row[_CSV_DATABASE] or None)
    elif fmt is LogFormat.jsonlog:
        with path.open(errors="replace") as file:
            for line in file:
                if line.strip():
                    data = orjson.loads(line)
                    yield LogEntry(str(data.get("message", "")), data.get("dbname"))
    else:
        yield from _stderr_entries(path)


def _stderr_entries(path: Path) -> Iterator[LogEntry]:
    """Entries of a stderr log: a statement's further lines follow its first one, each
    starting with a tab (PostgreSQL indents them so that they are told apart)."""
    message: list[str] | None = None
    with path.open(errors="replace") as file:
        for raw in file:
            line = raw.rstrip("\n")
            if line.startswith("\t") and message is not None:
                message.append(line[1:])
                continue
            if message is not None:
                yield LogEntry("\n".join(message))
                message = None
            match = _ENTRY.match(line)
            if match is not None and match["level"] == "LOG":
                message = [match["message"]]
    if message is not None:
        yield LogEntry("\n".join(message))
