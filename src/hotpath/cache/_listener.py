"""Invalidation messages: their wire format, the waiters woken by them, and the listener
thread that keeps one pub/sub subscription alive, health-checks it with PINGs (a paused Redis
keeps the socket open but answers nothing) and reports when it drops or comes back.

Messages are ``origin \\x1f kind \\x1f name \\x1f version``: kind ``k`` (a key changed: set,
filled, deleted or its lease given back) or ``t`` (a tag moved to ``version``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

log = logging.getLogger("hotpath.cache")

_SEP = "\x1f"


class Kind(Enum):
    """What a write changed, and what an invalidation message is about; the value is the
    message's kind on the wire."""

    KEY = "k"  # a key: set, filled, deleted or its lease given back
    TAG = "t"  # a tag: moved to a new version


_KINDS = {kind.value: kind for kind in Kind}


@dataclass(frozen=True, slots=True)
class Message:
    origin: str
    kind: Kind
    name: str
    version: str

    def encode(self) -> str:
        return _SEP.join((self.origin, self.kind.value, self.name, self.version))

    @classmethod
    def decode(cls, raw: object) -> Message | None:
        """The message, or None if it is not one hotpath sends (anyone who can publish to
        Redis can put anything on the channel)."""
        try:
            text = raw.decode() if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            return None
        if not isinstance(text, str):
            return None
        parts = text.split(_SEP)
        if len(parts) != 4 or parts[1] not in _KINDS:
            return None
        origin, kind, name, version = parts
        return cls(origin, _KINDS[kind], name, version)


class Waiters:
    """Callbacks to run when a key changes (callers waiting for another process's load)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[str, list[Callable[[], None]]] = {}

    def arm(self, key: str, wake: Callable[[], None]) -> None:
        with self._lock:
            self._by_key.setdefault(key, []).append(wake)

    def disarm(self, key: str, wake: Callable[[], None]) -> None:
        with self._lock:
            callbacks = self._by_key.get(key)
            if callbacks and wake in callbacks:
                callbacks.remove(wake)
                if not callbacks:
                    del self._by_key[key]

    def wake(self, key: str) -> None:
        with self._lock:
            callbacks = self._by_key.pop(key, [])
        for wake in callbacks:
            wake()

    def wake_all(self) -> None:
        with self._lock:
            every = [w for ws in self._by_key.values() for w in ws]
            self._by_key.clear()
        for wake in every:
            wake()


class Listener:
    """A daemon thread subscribed to ``channel``; ``connected`` is set while it is."""

    def __init__(
        self,
        make_pubsub: Callable[[], Any],
        channel: str,
        on_message: Callable[[Message], None],
        on_connect: Callable[[], None],
        on_disconnect: Callable[[], None],
        health_interval: float,
        on_unreadable: Callable[[], None] = lambda: None,
    ) -> None:
        self._make_pubsub = make_pubsub
        self._channel = channel
        self._on_message = on_message
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._on_unreadable = on_unreadable
        self._interval = health_interval
        self._timeout = max(3 * health_interval, 1.0)
        self.connected = threading.Event()
        self.drops = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"hotpath.cache listener {channel}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self._make_pubsub()
                pubsub.subscribe(self._channel)
                if not self._confirmed(pubsub):
                    raise TimeoutError("no subscribe confirmation")
                self._on_connect()
                self.connected.set()
                backoff = 0.05
                self._pump(pubsub)
            except Exception as error:  # the listener must survive anything Redis does
                if not self._stop.is_set():
                    log.info("hotpath.cache invalidation channel down: %r", error)
            finally:
                if self.connected.is_set():
                    self.connected.clear()
                    self.drops += 1
                    self._on_disconnect()
                if pubsub is not None:
                    with contextlib.suppress(Exception):  # closing a broken connection
                        pubsub.close()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 1.0)

    def _confirmed(self, pubsub: Any) -> bool:
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            message = pubsub.get_message(timeout=self._interval)
            if message is not None and message.get("type") == "subscribe":
                return True
        return False

    def _pump(self, pubsub: Any) -> None:
        last_heard = time.monotonic()
        pinged_at: float | None = None
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=self._interval)
            now = time.monotonic()
            if message is not None:
                last_heard, pinged_at = now, None
                if message.get("type") == "message":
                    decoded = Message.decode(message.get("data"))
                    if decoded is None:
                        self._on_unreadable()
                    else:
                        self._on_message(decoded)
            elif pinged_at is None and now - last_heard >= self._interval:
                pubsub.ping()
                pinged_at = now
            elif pinged_at is not None and now - pinged_at > self._timeout:
                raise TimeoutError(f"no PONG within {self._timeout:.1f}s")
