"""The agent ``hotpath run`` starts in every Python process of the run (from the bootstrap's
``sitecustomize``).

The bootstrap starts it after the first import of SQLAlchemy, an app server, a framework or
hotpath (pytest's plugin starts it too). It registers post-import hooks (``wrapt``, as ddtrace does,
so import order does not matter) and returns. Only a process that imports SQLAlchemy, an
app server or a framework builds the run's :class:`~hotpath.observe.Profiler` and writes
its WORKER STATE to ``$HOTPATH_RUN_DIR/worker-<pid>.json`` every second and, once the
requests in flight on other threads have concluded, a FINAL one as it leaves: at exit, in
multiprocessing's exit finalizers, or on a fatal signal (atomically: a temporary file, then
``os.replace``).

What it instruments, without a line of the app changed:

- every SQLAlchemy ``Engine``/``AsyncEngine`` (the profiler listens on the ``Engine``
  class; observe's process-wide hooks time redis-py, httpx, requests and aiohttp);
- every engine's pool (``hotpath.pool.instrument_pool``, metering only: no pings, no
  recycling), a second after the engine is created, so that an app that meters its own
  pool right after ``create_engine`` keeps its own options; pools the app meters itself
  are collected too;
- the app, at the server: uvicorn's ``Server.startup`` (the loaded ASGI app), gunicorn's
  ``Worker.wsgi`` as it is set (WSGI workers; uvicorn's worker goes through uvicorn),
  ``Flask.__call__`` and ``Starlette.__call__`` (apps called directly: ``flask run``, test
  clients). One scope per request, named by the route; a request already in a scope of the
  run (an app mounted in another, a test) is not scoped twice;
- pytest: one scope per test (``hotpath.run._pytest_plugin``, which the bootstrap adds to
  ``PYTEST_PLUGINS``);
- ``hotpath.cache`` caches, ``hotpath.routing`` replica sets and ``hotpath.concurrent``
  circuit breakers the app creates (their constructors wrapped; held weakly).

It never raises into the app: whatever fails is listed under ``uninstrumented`` with the
reason, and the program goes on as it would without hotpath.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import contextvars
import inspect
import logging
import os
import random
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import wrapt

from ._options import ENV_DIR, WorkerOptions

if TYPE_CHECKING:
    from ..observe import Profiler

WRITE_INTERVAL_S = 1.0
# Signals whose default action ends a process with no atexit and no exit finalizers (hotpath
# run forwards both to the command): the agent writes the final state, then dies of them.
# SIGINT and SIGQUIT only when left at their default action (uvicorn's gunicorn worker sets
# them so, and uvicorn re-raises the signal it stopped on; gunicorn's master sends SIGQUIT
# on Ctrl-C): Python's own SIGINT handler raises KeyboardInterrupt, which runs atexit
FATAL_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)
# The final state waits at most this long for requests still running on other threads: well
# under the supervisor's grace period before it kills what is left (LEFTOVER_GRACE_S).
FINAL_WAIT_S = 2.0
# Engines are metered once this old: an app that meters its own pool does it right after
# create_engine, and its options (pings, recycling) must win over the run's.
METER_AFTER_S = 0.5

# True inside a request or test the run already scoped: an inner app (a mounted one, a test
# client inside a test) records into that scope rather than opening another.
_in_scope: contextvars.ContextVar[bool] = contextvars.ContextVar("hotpath_run_scope", default=False)

_agent: Agent | None = None
_agent_lock = threading.Lock()


def start() -> None:
    """Start the agent in this process (once: a second call, or a module re-import, is a
    no-op; a forked child is handled by the fork hooks)."""
    global _agent
    run_dir = os.environ.get(ENV_DIR)
    if not run_dir:
        return
    with _agent_lock:
        if _agent is not None and _agent.pid == os.getpid():
            return
        _agent = Agent(run_dir, WorkerOptions.from_env())
    _agent.install()


def current() -> Agent | None:
    return _agent


class Agent:
    """This process's share of the run: hooks, the profiler, the registries, the writer."""

    def __init__(self, run_dir: str, options: WorkerOptions) -> None:
        self.pid = os.getpid()
        self.run_dir = run_dir
        self.options = options
        self.started = time.time()
        self.scopes = 0  # requests and tests this process scoped, concluded
        # scopes open now, by the thread that opened them (the final write waits for them)
        self._in_flight: collections.Counter[int] = collections.Counter()
        # reentrant: a fatal signal's handler may run on a thread that holds it
        self._scopes_changed = threading.Condition(threading.RLock())
        # the thread writing the final state or forking: a fatal signal that interrupts it is
        # acted on once it is done, not with a second write nested in the first
        self._busy_thread: int | None = None
        self._deferred_signal: int | None = None
        self.uninstrumented: list[dict[str, str]] = []
        self._noted: set[str] = set()
        self._profiler: Profiler | None = None
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._random = random.Random()
        # weakly held: the run must not keep the app's objects alive
        self._engines: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        self._pools: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._metered_by_run: weakref.WeakSet[Any] = weakref.WeakSet()
        self._caches: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._replica_sets: weakref.WeakSet[Any] = weakref.WeakSet()
        self._breakers: weakref.WeakSet[Any] = weakref.WeakSet()

    # -- bookkeeping ------------------------------------------------------------------------

    def note(self, what: str, why: str) -> None:
        """Record something left uninstrumented (once per what and why)."""
        key = f"{what}\0{why}"
        with self._lock:
            if key not in self._noted:
                self._noted.add(key)
                self.uninstrumented.append({"what": what, "why": why})

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Run hotpath's own work: a failure becomes a note, never the app's exception."""
        try:
            yield
        except Exception as exc:
            self.note(what, f"{type(exc).__name__}: {exc}")

    # -- hooks --------------------------------------------------------------------------------

    def install(self) -> None:
        hooks: dict[str, Callable[[Any], None]] = {
            "sqlalchemy": self._hook_sqlalchemy,
            "uvicorn.server": self._hook_uvicorn,
            "gunicorn.workers.base": self._hook_gunicorn,
            "flask.app": self._hook_flask,
            "starlette.applications": self._hook_starlette,
            "hotpath.pool._instrument": self._hook_instrument_pool,
            "hotpath.cache._sync": self._hook_cache,
            "hotpath.cache._async": self._hook_cache,
            "hotpath.routing._base": self._hook_routing,
            "hotpath.concurrent._breaker": self._hook_breaker,
        }
        for module, hook in hooks.items():
            wrapt.register_post_import_hook(self._guarded_hook(module, hook), module)
        self._handle_fatal_signals()

    def _guarded_hook(self, module: str, hook: Callable[[Any], None]) -> Callable[[Any], None]:
        def run(loaded: Any) -> None:
            with self.guard(f"{module} (instrumenting it at import)"):
                hook(loaded)

        return run

    def _hook_sqlalchemy(self, module: Any) -> None:
        # The profiler (which listens on every Engine, existing ones included) is made at the
        # first engine, not here: SQLAlchemy may be imported by hotpath.observe itself, which
        # cannot be imported again while it is being imported.
        agent = self

        def engine_init(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> None:
            wrapped(*args, **kwargs)
            with agent.guard("SQLAlchemy engines (observing them)"):
                agent.profiler()
            with agent.guard("SQLAlchemy engine (recording it for pool metrics)"):
                agent._engines[instance] = time.monotonic()

        wrapt.wrap_function_wrapper("sqlalchemy.engine.base", "Engine.__init__", engine_init)

    def _hook_uvicorn(self, module: Any) -> None:
        agent = self

        def startup(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            # The app is loaded by now (Server.serve loads it first); wrapping it here rather
            # than around Config.load keeps hotpath's frames out of an import error's
            # traceback. Returns the coroutine: no frame of ours while it runs either.
            config = instance.config
            with agent.guard("the ASGI app uvicorn loaded"):
                if config.loaded and not isinstance(config.loaded_app, RunASGI):
                    config.loaded_app = RunASGI(config.loaded_app, agent)
            return wrapped(*args, **kwargs)

        wrapt.wrap_function_wrapper(module, "Server.startup", startup)

    def _hook_gunicorn(self, module: Any) -> None:
        # gunicorn sets ``worker.wsgi`` once, after loading the app: wrapped as it is set (a
        # descriptor, so no frame of hotpath's sits in the app's import). uvicorn's gunicorn
        # worker holds an ASGI app, served through uvicorn's Server.startup instead.
        module.Worker.wsgi = _WrapOnSet(
            "wsgi",
            lambda app: app if _is_asgi(app) or isinstance(app, RunWSGI) else RunWSGI(app, self),
            getattr(module.Worker, "wsgi", None),
        )

    def _hook_flask(self, module: Any) -> None:
        agent = self

        def call(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            if _in_scope.get():
                return wrapped(*args, **kwargs)
            if not agent.sampled():
                return _unsampled_wsgi(wrapped, *args, **kwargs)
            # ``wrapped`` is bound to the Flask app: the middleware reads its url_map
            return agent.serve_wsgi(wrapped, *args, **kwargs)

        wrapt.wrap_function_wrapper(module, "Flask.__call__", call)

    def _hook_starlette(self, module: Any) -> None:
        agent = self

        def call(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            scope = args[0] if args else kwargs.get("scope", {})
            if scope.get("type") != "http" or _in_scope.get():
                return wrapped(*args, **kwargs)
            if not agent.sampled():
                return _unsampled_asgi(wrapped, *args, **kwargs)
            return agent.serve_asgi(wrapped, *args, **kwargs)

        wrapt.wrap_function_wrapper(module, "Starlette.__call__", call)

    def _hook_instrument_pool(self, module: Any) -> None:
        agent = self

        def instrument_pool(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            target = args[0] if args else kwargs.get("target")
            engine = getattr(target, "sync_engine", target)
            with contextlib.suppress(TypeError):  # not weakly referenceable: not an engine
                if engine in agent._metered_by_run:
                    # the run metered it first (the app meters late): the app gets the same
                    # metrics rather than an "already instrumented" error
                    agent.note(
                        f"instrument_pool options of {_engine_name(engine)}",
                        "the app metered this pool after hotpath run had: the run's "
                        "metering (no pings, no recycling) stays",
                    )
                    return agent._pools[engine]
            metrics = wrapped(*args, **kwargs)
            with agent.guard("a pool the app metered"):
                agent._pools[target] = metrics
            return metrics

        wrapt.wrap_function_wrapper(module, "instrument_pool", instrument_pool)

    def _register(self, into: Callable[[Any, Any], None], what: str) -> Any:
        agent = self

        def init(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> None:
            wrapped(*args, **kwargs)
            with agent.guard(what):
                into(instance, kwargs)

        return init

    def _hook_cache(self, module: Any) -> None:
        def add(cache: Any, kwargs: dict[str, Any]) -> None:
            self._caches[cache] = str(kwargs.get("namespace", "hotpath"))
            self.profiler()

        name = "AsyncCache" if module.__name__.endswith("_async") else "Cache"
        wrapt.wrap_function_wrapper(
            module, f"{name}.__init__", self._register(add, f"hotpath.cache.{name}")
        )

    def _hook_routing(self, module: Any) -> None:
        def add(replica_set: Any, kwargs: dict[str, Any]) -> None:
            self._replica_sets.add(replica_set)

        wrapt.wrap_function_wrapper(
            module, "ReplicaSetBase.__init__", self._register(add, "hotpath.routing replica set")
        )

    def _hook_breaker(self, module: Any) -> None:
        def add(breaker: Any, kwargs: dict[str, Any]) -> None:
            self._breakers.add(breaker)

        wrapt.wrap_function_wrapper(
            module, "CircuitBreaker.__init__", self._register(add, "hotpath.concurrent breaker")
        )

    # -- the profiler and requests ---------------------------------------------------------

    def profiler(self) -> Profiler:
        """The run's profiler in this process, built (and the writer started) on first use."""
        if self._profiler is None:
            with self._lock:
                if self._profiler is None:
                    from ..observe import Profiler  # noqa: PLC0415 - on first use

                    profiler = Profiler(settings=self.options.observe_settings())
                    profiler.instrument()
                    # findings go to the report, not into the app's logs
                    quiet = logging.getLogger("hotpath.observe")
                    quiet.propagate = False
                    quiet.addHandler(logging.NullHandler())
                    self._profiler = profiler
                    self._activate()
        return self._profiler

    def sampled(self) -> bool:
        rate = self.options.sample
        return rate >= 1.0 or self._random.random() < rate

    def _scope_opened(self) -> int:
        """A scope is in flight on this thread (returned: its conclusion names it)."""
        thread = threading.get_ident()
        with self._scopes_changed:
            self._in_flight[thread] += 1
        with self._lock:
            if self._engines:
                # the app has started (its own instrument_pool calls are behind it): meter
                # the engines now, so that the first requests' checkouts are counted
                self._meter_new_engines(settled=True)
        return thread

    def _scope_concluded(self, thread: int) -> None:
        """The scope opened on ``thread`` is in the profiler's figures now."""
        with self._scopes_changed:
            if self._in_flight[thread] > 1:
                self._in_flight[thread] -= 1
            else:  # (a scope a forked child inherited was never counted in it)
                self._in_flight.pop(thread, None)
            self.scopes += 1
            self._scopes_changed.notify_all()

    async def serve_asgi(self, app: Any, scope: Any, receive: Any, send: Any) -> None:
        from ..observe import ASGIMiddleware  # noqa: PLC0415 - loaded with the profiler

        try:
            middleware = ASGIMiddleware(app, self.profiler(), server_timing=False)
        except Exception as exc:
            self.note("an ASGI request", f"{type(exc).__name__}: {exc}")
            await app(scope, receive, send)
            return
        thread = self._scope_opened()
        token = _in_scope.set(True)
        try:
            await middleware(scope, receive, send)
        finally:
            _in_scope.reset(token)
            self._scope_concluded(thread)

    def serve_wsgi(self, app: Any, environ: Any, start_response: Any) -> Any:
        from ..observe import WSGIMiddleware  # noqa: PLC0415 - loaded with the profiler

        try:
            middleware = WSGIMiddleware(app, self.profiler(), server_timing=False)
        except Exception as exc:
            self.note("a WSGI request", f"{type(exc).__name__}: {exc}")
            return app(environ, start_response)
        thread = self._scope_opened()
        token = _in_scope.set(True)  # the app runs in this call, then in its body's chunks
        try:
            body = middleware(environ, start_response)
        except BaseException:
            self._scope_concluded(thread)  # the middleware concluded it with the error
            raise
        finally:
            _in_scope.reset(token)
        return _RunBody(body, self, thread)

    @contextlib.contextmanager
    def test_scope(self, name: str) -> Iterator[None]:
        """One scope around a test's call (pytest runs)."""
        try:
            opened = self.profiler().scope(name)
            opened.__enter__()
        except Exception as exc:
            self.note(f"test {name}", f"{type(exc).__name__}: {exc}")
            yield
            return
        thread = self._scope_opened()
        token = _in_scope.set(True)
        failed: tuple[Any, Any, Any] = (None, None, None)
        try:
            yield
        except BaseException:
            failed = sys.exc_info()
            raise
        finally:
            _in_scope.reset(token)
            with self.guard(f"test {name} (closing its scope)"):
                opened.__exit__(*failed)
            self._scope_concluded(thread)

    # -- the worker state ------------------------------------------------------------------

    def _activate(self) -> None:
        """Start writing this process's state: every second, and the final one at exit or
        on a fatal signal."""
        atexit.register(self.write_final)
        # multiprocessing's children (uvicorn --workers) leave through os._exit, past atexit:
        # its own exit finalizers are what runs there
        from multiprocessing import util  # noqa: PLC0415

        util.Finalize(None, self.write_final, exitpriority=100)
        self._start_writer()
        self._handle_fatal_signals()  # if the agent started off the main thread

    def _handle_fatal_signals(self) -> None:
        """Handle each of ``FATAL_SIGNALS`` left at its default: write the final state first,
        then die of it as the default would. Done when the agent starts, before the app's
        server runs: a server that sets handlers of its own while it serves restores the
        ones it found when it stops — uvicorn then re-raises the SIGTERM it caught (its
        master's, on Ctrl-C) — and must find this one, not the default, which would end the
        worker without a final state (its last requests lost)."""
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers
        for signum in FATAL_SIGNALS:
            with contextlib.suppress(ValueError, OSError):
                if signal.getsignal(signum) is signal.SIG_DFL:
                    signal.signal(signum, self._on_fatal_signal)

    def _on_fatal_signal(self, signum: int, frame: Any) -> None:
        if self._busy_thread == threading.get_ident():
            # it interrupted this thread's final write (or a fork): acted on once that is done
            self._deferred_signal = signum
            return
        if self._profiler is not None:
            self.write_final()
        _die_of(signum)

    def _act_on_deferred_signal(self) -> None:
        signum, self._deferred_signal = self._deferred_signal, None
        if signum is not None:
            self._on_fatal_signal(signum, None)

    def _start_writer(self) -> None:
        self._stop = threading.Event()
        self._writer = threading.Thread(
            target=self._write_every_second, name="hotpath-run-writer", daemon=True
        )
        self._writer.start()

    def _write_every_second(self) -> None:
        while not self._stop.wait(WRITE_INTERVAL_S):
            self._meter_new_engines()
            if not self.write():
                return  # the run directory is gone: the supervisor has finished

    def write_final(self) -> None:
        """Write this process's last state, marked final: once the scopes in flight on other
        threads have concluded (their responses may be out already: they belong in the
        report), ``FINAL_WAIT_S`` at most. Scopes of this thread cannot conclude while it is
        here (an event loop's, when a signal's handler runs on it): the state counts them."""
        this_thread = threading.get_ident()
        self._busy_thread = this_thread
        try:
            self._stop.set()
            with self._scopes_changed:
                self._scopes_changed.wait_for(
                    lambda: not any(t != this_thread for t in self._in_flight), FINAL_WAIT_S
                )
            self.write(final=True)
        finally:
            self._busy_thread = None
        self._act_on_deferred_signal()

    def write(self, *, final: bool = False) -> bool:
        """Write the state atomically; False when the run directory is gone."""
        import orjson  # noqa: PLC0415 - a dependency of hotpath, loaded with the profiler

        with self._write_lock:
            state = self.state()
            state["final"] = final
            path = os.path.join(self.run_dir, f"worker-{self.pid}.json")
            temporary = f"{path}.{threading.get_ident()}.tmp"
            try:
                with open(temporary, "wb") as handle:
                    handle.write(orjson.dumps(state, default=str))
                os.replace(temporary, path)
            except OSError:
                return False
        return True

    def state(self) -> dict[str, Any]:
        """This process's WORKER STATE (see RUN_SPEC): cumulative since it started."""
        observe = None
        if self._profiler is not None:
            with self.guard("the profiler's snapshot"):
                observe = self._profiler.snapshot()
        state: dict[str, Any] = {
            "pid": self.pid,
            "argv": list(sys.argv),
            "started": self.started,
            "written": time.time(),
            "scopes": self.scopes,
            "in_flight": sum(self._in_flight.values()),
            "observe": observe,
        }
        for key, collect in (
            ("pools", self._pool_states),
            ("caches", self._cache_states),
            ("routing", self._routing_states),
            ("breakers", self._breaker_states),
        ):
            state[key] = []
            with self.guard(f"{key} state"):
                state[key] = collect()
        with self._lock:
            state["uninstrumented"] = list(self.uninstrumented)
        return state

    def _meter_new_engines(self, *, settled: bool = False) -> None:
        """Meter the pools of engines created since the last call: once ``METER_AFTER_S``
        old, or all of them when the app is ``settled`` (serving its first request)."""
        with self._lock:
            self._meter_engines(settled)

    def _meter_engines(self, settled: bool) -> None:
        now = time.monotonic()
        for engine, created in list(self._engines.items()):
            if not settled and now - created < METER_AFTER_S:
                continue
            del self._engines[engine]
            if engine in self._pools:  # the app metered it itself
                continue
            with self.guard(f"the pool of engine {_engine_name(engine)}"):
                from ..pool import instrument_pool  # noqa: PLC0415

                # metering only: the app's pool keeps its own validation and recycling
                self._pools[engine] = instrument_pool(
                    engine, validate_idle_s=None, max_lifetime_s=None
                )
                self._metered_by_run.add(engine)

    def _pool_states(self) -> list[dict[str, Any]]:
        from dataclasses import asdict  # noqa: PLC0415

        return [asdict(metrics.snapshot()) for metrics in list(self._pools.values())]

    def _cache_states(self) -> list[dict[str, Any]]:
        return [
            {"namespace": namespace, **cache.stats().as_dict()}
            for cache, namespace in list(self._caches.items())
        ]

    def _routing_states(self) -> list[dict[str, Any]]:
        out = []
        for replica_set in list(self._replica_sets):
            nodes = replica_set.status()
            primary = next((n for n in nodes if n.role == "primary"), None)
            out.append(
                {
                    "name": primary.address if primary is not None else "replica set",
                    "nodes": [
                        {
                            "name": n.name,
                            "role": str(n.role),
                            "healthy": n.healthy,
                            "lag_s": n.lag_s,
                            "reads": n.reads,
                        }
                        for n in nodes
                    ],
                    "stats": replica_set.stats(),
                }
            )
        return out

    def _breaker_states(self) -> list[dict[str, Any]]:
        from dataclasses import asdict  # noqa: PLC0415

        out = []
        for breaker in list(self._breakers):
            stats = asdict(breaker.stats())
            stats["state"] = str(getattr(stats["state"], "value", stats["state"]))
            out.append(stats)
        return out

    # -- fork ------------------------------------------------------------------------------------

    def before_fork(self) -> None:
        self._busy_thread = threading.get_ident()
        self._write_lock.acquire()  # no snapshot half taken in the child

    def after_fork_in_parent(self) -> None:
        self._write_lock.release()
        self._busy_thread = None
        self._act_on_deferred_signal()

    def after_fork_in_child(self) -> None:
        """A forked worker (gunicorn ``--preload``, multiprocessing's fork) is a new worker:
        its own file, its own figures (the parent's are the parent's), a writer thread of its
        own (threads do not survive fork)."""
        self._write_lock = threading.Lock()
        self._lock = threading.RLock()
        self._scopes_changed = threading.Condition(threading.RLock())
        self._in_flight = collections.Counter()  # the parent's requests are the parent's
        self._busy_thread = None
        self._deferred_signal = None  # the parent's to act on
        self.pid = os.getpid()
        self.started = time.time()
        self.scopes = 0
        if self._profiler is not None:
            with self.guard("the profiler after fork"):
                self._profiler.reset()
            self._start_writer()


class _WrapOnSet:
    """An instance attribute whose value is wrapped as it is set."""

    def __init__(self, name: str, wrap: Callable[[Any], Any], default: Any) -> None:
        self._name = name
        self._wrap = wrap
        self._default = default

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:
            return self
        return instance.__dict__.get(self._name, self._default)

    def __set__(self, instance: Any, value: Any) -> None:
        try:
            value = self._wrap(value)
        except Exception as exc:
            _agent_note(f"the app in {type(instance).__name__}.{self._name}", exc)
        instance.__dict__[self._name] = value


def _agent_note(what: str, exc: Exception) -> None:
    if _agent is not None:
        _agent.note(what, f"{type(exc).__name__}: {exc}")


class RunASGI:
    """An ASGI app as the run serves it: a scope per sampled HTTP request."""

    def __init__(self, app: Any, agent: Agent) -> None:
        self.app = app
        self._agent = agent

    def __getattr__(self, name: str) -> Any:  # the server may look at the app's attributes
        return getattr(self.app, name)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or _in_scope.get():
            await self.app(scope, receive, send)
            return
        if not self._agent.sampled():
            await _unsampled_asgi(self.app, scope, receive, send)
            return
        await self._agent.serve_asgi(self.app, scope, receive, send)


class RunWSGI:
    """A WSGI app as the run serves it: a scope per sampled request."""

    def __init__(self, app: Any, agent: Agent) -> None:
        self.app = app
        self._agent = agent

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    def __call__(self, environ: Any, start_response: Any) -> Any:
        if _in_scope.get():
            return self.app(environ, start_response)
        if not self._agent.sampled():
            return _unsampled_wsgi(self.app, environ, start_response)
        return self._agent.serve_wsgi(self.app, environ, start_response)


async def _unsampled_asgi(app: Any, scope: Any, receive: Any, send: Any) -> None:
    """A request the run decided not to record: flagged, so that an inner app's hook (the
    framework's, under the server's) does not sample it a second time."""
    token = _in_scope.set(True)
    try:
        await app(scope, receive, send)
    finally:
        _in_scope.reset(token)


def _unsampled_wsgi(app: Any, environ: Any, start_response: Any) -> Any:
    token = _in_scope.set(True)
    try:
        body = app(environ, start_response)
    finally:
        _in_scope.reset(token)
    return _flagged(body)


def _flagged(body: Iterable[bytes]) -> Iterator[bytes]:
    """An unrecorded WSGI body iterated with the run's flag set (the app runs then too);
    closing this closes the app's body."""
    _in_scope.set(True)
    try:
        yield from body
    finally:
        _in_scope.set(False)


class _RunBody:
    """A WSGI body as the run serves it: each chunk is produced with the run's scope flag set
    (the app runs then too), and the agent learns when the request's scope concluded — the
    body ran out, or was closed or dropped unread, as observe's body concludes it."""

    def __init__(self, body: Iterable[bytes], agent: Agent, thread: int) -> None:
        self._body = body
        self._chunks = iter(body)
        self._agent = agent
        self._thread = thread
        self._concluded = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        token = _in_scope.set(True)
        try:
            return next(self._chunks)
        except StopIteration:
            self._conclude()
            raise
        finally:
            _in_scope.reset(token)

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        try:
            if close is not None:
                close()  # observe's body: closes the app's, concludes the scope
        finally:
            self._conclude()

    def __del__(self) -> None:
        self.close()

    def _conclude(self) -> None:
        if not self._concluded:
            self._concluded = True
            self._agent._scope_concluded(self._thread)


def _die_of(signum: int) -> None:
    """End the process as ``signum``'s default action does (its exit status says so)."""
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def _is_asgi(app: Any) -> bool:
    call = app if inspect.isfunction(app) else getattr(app, "__call__", None)  # noqa: B004
    return inspect.iscoroutinefunction(call)


def _engine_name(engine: Any) -> str:
    url = getattr(engine, "url", None)
    if url is None:
        return repr(engine)
    return f"{url.drivername}://{url.host or ''}:{url.port or ''}/{url.database or ''}"


def _before_fork() -> None:
    if _agent is not None:
        _agent.before_fork()


def _after_fork_in_parent() -> None:
    if _agent is not None:
        _agent.after_fork_in_parent()


def _after_fork_in_child() -> None:
    if _agent is not None:
        _agent.after_fork_in_child()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
