"""Loaded by ``site`` in every Python process ``hotpath run`` starts (its directory is first
on ``PYTHONPATH``, kept there so that spawned workers, uvicorn ``--workers`` among them,
load it too).

It arranges for hotpath's agent to start in this process (on the first import that can need
it: see ``_TRIGGERS``), adds hotpath's plugin to ``PYTEST_PLUGINS``, then imports the
``sitecustomize`` this one shadows (the user's or the distribution's), as ddtrace's bootstrap
does. It never raises into the process: if hotpath cannot load here (another interpreter
without hotpath, say), it leaves a note for the report and the program runs as it would without it.
"""

import importlib
import importlib.util
import os
import sys

_PYTEST_PLUGIN = "hotpath.run._pytest_plugin"


def _note_failure(why: str) -> None:
    """Tell the supervisor this process runs uninstrumented (stdlib only: hotpath may be
    the thing that failed to import)."""
    plugins = os.environ.get("PYTEST_PLUGINS", "").split(",")
    if _PYTEST_PLUGIN in plugins:  # inherited from a parent where hotpath loads: not here
        os.environ["PYTEST_PLUGINS"] = ",".join(p for p in plugins if p != _PYTEST_PLUGIN)
    run_dir = os.environ.get("HOTPATH_RUN_DIR")
    if not run_dir:
        return
    import json  # noqa: PLC0415 - only on this rare path
    import time  # noqa: PLC0415

    pid = os.getpid()
    path = os.path.join(run_dir, f"worker-{pid}.json")
    state = {
        "pid": pid,
        "argv": list(sys.argv),
        "started": time.time(),
        "written": time.time(),
        "observe": None,
        "final": True,  # the only state this process writes
        "uninstrumented": [{"what": f"process {sys.executable}", "why": why}],
    }
    try:
        with open(path + ".tmp", "w") as handle:
            json.dump(state, handle)
        os.replace(path + ".tmp", path)
    except OSError:
        pass


# The imports after which a process may need the agent. Until one of them, nothing of
# hotpath is imported: a process that never serves, tests or queries pays nothing, and
# pytest can still mark hotpath (a pytest plugin) for assertion rewriting before it loads.
_TRIGGERS = ("sqlalchemy", "uvicorn", "gunicorn", "flask", "starlette", "hotpath")
_started = False


def _start(module: object = None) -> None:
    global _started
    if _started:
        return
    _started = True
    try:
        from hotpath.run import _agent  # noqa: PLC0415
    except Exception as exc:  # not importable in this interpreter
        _note_failure(f"hotpath cannot be imported here: {type(exc).__name__}: {exc}")
        return
    try:
        _agent.start()
    except Exception as exc:  # never the app's problem
        _note_failure(f"hotpath's agent failed to start: {type(exc).__name__}: {exc}")


def _install() -> None:
    if not os.environ.get("HOTPATH_RUN_DIR"):
        return
    try:
        if importlib.util.find_spec("hotpath") is None:  # finds it without running it
            raise ImportError("No module named 'hotpath'")
        import wrapt  # noqa: PLC0415
    except Exception as exc:
        _note_failure(f"hotpath cannot be imported here: {type(exc).__name__}: {exc}")
        return
    plugins = [p for p in os.environ.get("PYTEST_PLUGINS", "").split(",") if p]
    if _PYTEST_PLUGIN not in plugins:  # a pytest run: one scope per test
        os.environ["PYTEST_PLUGINS"] = ",".join([*plugins, _PYTEST_PLUGIN])
    for name in _TRIGGERS:
        wrapt.register_post_import_hook(_start, name)


def _chain() -> None:
    """Import the ``sitecustomize`` that this module shadows, if there is one."""
    here = os.path.dirname(os.path.abspath(__file__))
    positions = [i for i, entry in enumerate(sys.path) if os.path.abspath(entry or ".") == here]
    if not positions:
        return
    ours = sys.modules.pop("sitecustomize", None)
    saved = list(sys.path)
    sys.path[:] = [entry for i, entry in enumerate(saved) if i not in positions]
    try:
        importlib.import_module("sitecustomize")  # the next one on the path, if any
    except ImportError as exc:
        if exc.name != "sitecustomize":
            raise  # theirs failed: site reports it as it would without hotpath
        if ours is not None:
            sys.modules["sitecustomize"] = ours
    finally:
        sys.path[:] = saved


_install()
_chain()
