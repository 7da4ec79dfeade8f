"""hotpath.bulk: bulk writes with PostgreSQL's COPY.

- :func:`copy_rows` (psycopg 3) / :func:`copy_rows_async` (asyncpg) — stream rows from any
  iterable into a table, in the caller's transaction.
- :func:`upsert_rows` — COPY into a staged temporary table, then one
  ``INSERT ... ON CONFLICT DO UPDATE``.

A bad row fails the whole write (COPY is all-or-nothing) with :class:`BulkRowError` naming the
row's index and the column.
"""

from ._copy import BulkError, BulkRowError, copy_rows, copy_rows_async, upsert_rows

__all__ = ["BulkError", "BulkRowError", "copy_rows", "copy_rows_async", "upsert_rows"]
