"""Loaded by ``site`` in every Python process ``hotpath run`` starts (its directory is first
on ``PYTHONPATH``, kept there so that spawned workers, uvicorn ``--workers`` among them,
load it too).

It starts hotpath's agent in this process, then imports the ``sitecustomize`` this one
shadows (the user's or the distribution's), as ddtrace's bootstrap does. It never raises
into the process: if hotpath cannot load here (another interpreter without hotpath, say),
it leaves a note for the report and the program runs as it would without it.
"""

import os
import sys


def _note_failure(why):
    """Tell the supervisor this process runs uninstrumented (stdlib only: hotpath may be
    the thing that failed to import)."""
    run_dir = os.environ.get("HOTPATH_RUN_DIR")
    if not run_dir:
        return
    import json
    import time

    pid = os.getpid()
    path = os.path.join(run_dir, "worker-%d.json" % pid)
    state = {
        "pid": pid,
        "argv": list(sys.argv),
        "started": time.time(),
        "written": time.time(),
        "observe": None,
        "uninstrumented": [{"what": "process %s" % sys.executable, "why": why}],
    }
    try:
        with open(path + ".tmp", "w") as handle:
            json.dump(state, handle)
        os.replace(path + ".tmp", path)
    except OSError:
        pass


def _start():
    try:
        from hotpath.run import _agent
    except Exception as exc:  # not importable in this interpreter
        _note_failure("hotpath cannot be imported here: %s: %s" % (type(exc).__name__, exc))
        return
    try:
        _agent.start()
    except Exception as exc:  # never the app's problem
        _note_failure("hotpath's agent failed to start: %s: %s" % (type(exc).__name__, exc))


def _chain():
    """Import the ``sitecustomize`` that this module shadows, if there is one."""
    here = os.path.dirname(os.path.abspath(__file__))
    positions = [i for i, entry in enumerate(sys.path) if os.path.abspath(entry or ".") == here]
    if not positions:
        return
    ours = sys.modules.pop("sitecustomize", None)
    saved = list(sys.path)
    sys.path[:] = [entry for i, entry in enumerate(saved) if i not in positions]
    try:
        import sitecustomize  # noqa: F401 - the next one on the path, if any
    except ImportError as exc:
        if exc.name != "sitecustomize":
            raise  # theirs failed: site reports it as it would without hotpath
        if ours is not None:
            sys.modules["sitecustomize"] = ours
    finally:
        sys.path[:] = saved


_start()
_chain()
