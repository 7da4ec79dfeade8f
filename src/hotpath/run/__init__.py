"""hotpath.run: diagnose an existing app with no code change.

``hotpath run [options] -- uvicorn app:app --workers 2`` (or gunicorn, ``flask run``,
``python script.py``, ``python -m module``, ``pytest ...``) starts the command with hotpath
loaded in every Python process (a ``sitecustomize`` bootstrap on ``PYTHONPATH``, kept for
spawned workers), merges what each worker saw into one report, and on exit prints the
diagnosis and writes ``hotpath-report.json`` and ``hotpath-report.html``.

- :class:`RunOptions` / :func:`run`: the supervisor, for use from Python.
- :func:`run_state`: the merged RUN STATE of a run directory (what the dashboard shows).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from ._errors import RunConfigError, RunError

if TYPE_CHECKING:
    from ._options import Address, RunOptions, WorkerOptions
    from ._state import run_state
    from ._supervisor import run

# Imported on first use: the bootstrap imports this package in every Python process of a run.
__getattr__ = lazy_exports(
    __name__,
    {
        "Address": "._options",
        "RunOptions": "._options",
        "WorkerOptions": "._options",
        "run_state": "._state",
        "run": "._supervisor",
    },
)

__all__ = [
    "Address",
    "RunConfigError",
    "RunError",
    "RunOptions",
    "WorkerOptions",
    "run",
    "run_state",
]
