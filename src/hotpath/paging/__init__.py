"""hotpath.paging: keyset pagination and iteration.

- :func:`keyset_page` / :func:`keyset_page_async` — a page and an opaque, tamper-evident
  cursor for the next one; multi-column keys, mixed directions, PostgreSQL's NULL order.
- :func:`iter_keyset` / :func:`iter_keyset_async` — every row in chunks, constant memory.

Every page costs the same, where OFFSET reads and discards all the rows before it.
"""

from ._cursor import InvalidCursor, decode_cursor, encode_cursor
from ._keyset import PagingError
from ._pages import Page, iter_keyset, iter_keyset_async, keyset_page, keyset_page_async

__all__ = [
    "InvalidCursor",
    "Page",
    "PagingError",
    "decode_cursor",
    "encode_cursor",
    "iter_keyset",
    "iter_keyset_async",
    "keyset_page",
    "keyset_page_async",
]
