"""The supervisor: ``hotpath run`` stays the parent of the command (it does not ``exec``, as
``opentelemetry-instrument`` and ``ddtrace-run`` do), so that it can merge every worker's
state, serve the live page, and write the report when the command ends.

- A private run directory (``mkdtemp``: mode 0700) that the workers write into; it is
  removed at the end.
- The child runs in its own process group. In a terminal that group becomes the
  foreground one, so Ctrl-C reaches the app's processes exactly once (as a shell does);
  SIGINT, SIGTERM and SIGHUP sent to the supervisor are forwarded to the whole group, and a
  second SIGINT or SIGTERM kills it. When the command ends, whatever is left of the group
  (and, on Linux, any orphan re-parented to the supervisor) is terminated, then killed.
- The exit code is the command's (128 + N when a signal N ended it), or 1 when ``--fail-on``
  finds what it was given and the command itself succeeded.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
from rich.console import Console

from ._errors import RunConfigError
from ._options import ENV_DIR, ENV_OPTIONS, Address, RunOptions
from ._report import (
    fail_on_hits,
    one_line,
    print_diagnosis,
    recorded_anything,
    report_document,
    write_reports,
)
from ._state import final_state_gaps, merge_states, read_workers

BOOTSTRAP_DIR = str(Path(__file__).with_name("_bootstrap"))
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
LEFTOVER_GRACE_S = 5.0
STATE_CACHE_S = 0.5
_PR_SET_CHILD_SUBREAPER = 36


class _Run:
    """One run: its directory, its child, and the merged state on demand."""

    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self.settings = options.worker.observe_settings()
        self.run_dir = tempfile.mkdtemp(prefix="hotpath-run-")
        self.doctor: list[dict[str, Any]] = []
        self.notes: list[dict[str, Any]] = []
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def state(self) -> dict[str, Any]:
        """The RUN STATE now (what the dashboard and the metrics read; cached briefly)."""
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > STATE_CACHE_S:
                workers = read_workers(self.run_dir)
                state, _ = merge_states(
                    workers, self.settings, doctor=self.doctor, notes=self.notes
                )
                self._cached = (now, state)
            return self._cached[1]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [BOOTSTRAP_DIR, *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env[ENV_DIR] = self.run_dir
        env[ENV_OPTIONS] = self.options.worker.to_env()
        return env


def run(options: RunOptions, *, console: Console | None = None) -> int:
    """Run ``options.command`` instrumented; print and write the report; return the exit
    code (see the module doc)."""
    console = console or Console(stderr=True, highlight=False)
    report_dir = _report_dir(options.report_dir)
    current = _Run(options)
    servers: list[Callable[[], None]] = []
    try:
        if options.dashboard is not None:
            servers.append(_serve_dashboard(options.dashboard, current.state))
        if options.metrics is not None:
            servers.append(_serve_metrics(options.metrics, current.state))
        doctor = _start_doctor(options.db, current) if options.db else None
        code = _supervise(list(options.command), current.env(), options.stop_grace_s)
        if doctor is not None:
            doctor.join()
        # every process of the command has ended by now: these are their final states
        workers = read_workers(current.run_dir)
        current.notes.extend(final_state_gaps(workers))
        if not workers:
            current.notes.append(
                {
                    "what": "the command",
                    "why": "no Python process of it scoped a request or a test, or imported "
                    "SQLAlchemy (or none loaded hotpath's bootstrap: not a Python program, "
                    "python -I/-E/-S, or a cleared PYTHONPATH)",
                }
            )
        state, report = merge_states(
            workers, current.settings, doctor=current.doctor, notes=current.notes
        )
        document = report_document(state, list(options.command), code)
        paths = write_reports(report_dir, report, document)
        if recorded_anything(report):
            print_diagnosis(console, report, document, paths)
        else:
            console.print(one_line(report, document, paths), soft_wrap=True)
        hits = fail_on_hits(report, options.fail_on)
        for hit in hits:
            console.print(f"hotpath run: --fail-on: {hit}", soft_wrap=True, markup=False)
        if hits and code == 0:
            code = 1
        return code
    finally:
        for stop in servers:
            with contextlib.suppress(Exception):
                stop()
        shutil.rmtree(current.run_dir, ignore_errors=True)


def become_subreaper() -> None:
    """On Linux, orphans of the command (a worker whose parent died) are re-parented to the
    supervisor instead of init, so that none is left behind when the run ends."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _report_dir(value: str) -> Path:
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise RunConfigError(f"--report-dir {value!r} is a file: give a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunConfigError(f"--report-dir {value!r} cannot be created: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise RunConfigError(f"--report-dir {value!r} is not writable: give another directory")
    return path


def _supervise(command: list[str], env: dict[str, str], stop_grace_s: float) -> int:
    try:
        if sys.version_info >= (3, 11):
            child = subprocess.Popen(command, env=env, process_group=0)
        else:  # pragma: no cover - 3.10: a new session (C-level, safe with threads)
            child = subprocess.Popen(command, env=env, start_new_session=True)
    except OSError as exc:
        raise _CommandError(command[0], exc) from None
    with _foreground(child.pid), _forwarding(child.pid) as stopping:
        code = _wait(child, stopping, stop_grace_s)
    _end_leftovers(child.pid)
    return 128 - code if code < 0 else code


class _CommandError(RunConfigError):
    def __init__(self, name: str, exc: OSError) -> None:
        super().__init__(f"cannot start {name!r}: {exc.strerror or exc}")


@contextlib.contextmanager
def _foreground(pgid: int) -> Iterator[None]:
    """In a terminal, hand it to the child's group (Ctrl-C and reads from the terminal go to
    the app, as under a shell), and take it back at the end."""
    fd = None
    with contextlib.suppress(OSError):
        if os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp():
            fd = 0
    if fd is None:
        yield
        return
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # we are about to be background
    try:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(fd, pgid)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(fd, os.getpgrp())
        signal.signal(signal.SIGTTOU, previous)


def _wait(child: subprocess.Popen[bytes], stopping: dict[str, float], grace_s: float) -> int:
    """The child's exit code. Once a stop was forwarded, a child still running after
    ``grace_s`` (``--stop-grace``; hung in its shutdown) is killed with its group: ``hotpath
    run`` never waits forever, and reports what its workers wrote."""
    while True:
        try:
            return child.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            began = stopping.get("at")
            if began is not None and time.monotonic() - began > grace_s:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGKILL)
                stopping["at"] = float("inf")  # killed once


@contextlib.contextmanager
def _forwarding(pgid: int) -> Iterator[dict[str, float]]:
    """Forward SIGINT/SIGTERM/SIGHUP to the child's process group; a second SIGINT or
    SIGTERM kills the group. Yields when the first stop was forwarded (``"at"``)."""
    received: dict[int, int] = {}
    stopping: dict[str, float] = {}

    def forward(signum: int, frame: FrameType | None) -> None:
        stopping.setdefault("at", time.monotonic())
        received[signum] = received.get(signum, 0) + 1
        again = received.get(signal.SIGINT, 0) + received.get(signal.SIGTERM, 0)
        sent = signal.SIGKILL if signum != signal.SIGHUP and again > 1 else signum
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sent)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        yield stopping
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _end_leftovers(pgid: int) -> None:
    """Terminate what outlived the command: the rest of its process group and (as a
    subreaper) orphans re-parented here; kill what does not end within the grace period."""
    left: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.Error):
        for proc in psutil.Process().children(recursive=True):
            left[proc.pid] = proc
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid:
                left[proc.pid] = proc
    left.pop(os.getpid(), None)
    if not left:
        return
    for proc in left.values():
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(list(left.values()), timeout=LEFTOVER_GRACE_S)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=LEFTOVER_GRACE_S)


def _start_doctor(url: str, current: _Run) -> threading.Thread:
    """doctor's read-only checks of the app's database, alongside the app."""

    def diagnose() -> None:
        try:
            from ..doctor import diagnose  # noqa: PLC0415

            found = diagnose(url)
            current.doctor.extend(f.to_dict() for f in found.findings)
        except Exception as exc:
            current.notes.append({"what": "doctor (--db)", "why": f"{type(exc).__name__}: {exc}"})

    thread = threading.Thread(target=diagnose, name="hotpath-run-doctor", daemon=True)
    thread.start()
    return thread


def _bind(option: str, address: Address) -> socket.socket:
    """The listening socket, bound now: a port in use is a one-line error before the app
    starts, not a failure in a server thread later."""
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
        family, kind, proto, _, where = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(128)
    except OSError as exc:
        raise RunConfigError(
            f"{option} {address}: cannot listen there ({exc.strerror or exc}): give a free port"
        ) from None
    return sock


def _serve_dashboard(address: Address, source: Callable[[], dict[str, Any]]) -> Callable[[], None]:
    try:
        from ..dashboard import hotpath_dashboard  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
    except ImportError:
        raise RunConfigError(
            "--dashboard needs hotpath.dashboard, which this hotpath lacks"
        ) from None
    try:
        import uvicorn  # noqa: PLC0415
    except ImportError:
        raise RunConfigError("--dashboard needs uvicorn: pip install 'hotpath[demo]'") from None
    sock = _bind("--dashboard", address)
    config = uvicorn.Config(
        hotpath_dashboard(source), log_level="warning", lifespan="off", access_log=False
    )
    server = uvicorn.Server(config)
    # a server thread: uvicorn installs no signal handlers outside the main thread
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="hotpath-run-dashboard", daemon=True
    )
    thread.start()

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()

    return stop


def _serve_metrics(address: Address, source: Callable[[], dict[str, Any]]) -> Callable[[], None]:
    try:
        from ..metrics import RunStateCollector  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
    except ImportError:
        raise RunConfigError("--metrics needs hotpath.metrics, which this hotpath lacks") from None
    from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415

    registry = CollectorRegistry()
    registry.register(RunStateCollector(source))
    try:
        started = start_http_server(address.port, addr=address.host, registry=registry)
    except OSError as exc:
        raise RunConfigError(
            f"--metrics {address.port}: cannot listen there ({exc.strerror or exc}): "
            "give a free port"
        ) from None
    server = started[0] if isinstance(started, tuple) else None

    def stop() -> None:
        if server is not None:
            server.shutdown()
            server.server_close()

    return stop
