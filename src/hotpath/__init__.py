"""hotpath: make PostgreSQL + Redis backends fast, and prove it.

Components (each a sub-package with its own public API):

- :mod:`hotpath.stack` — a real local PostgreSQL primary + streaming replicas + Redis.
- :mod:`hotpath.testing` — the pytest plugin with fixtures on that stack.
"""

from ._errors import HotpathError
from .stack import LocalStack, StackError

__all__ = ["HotpathError", "LocalStack", "StackError", "__version__"]

__version__ = "0.1.0"
