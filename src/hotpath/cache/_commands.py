"""Which Redis call executes each flow op, and how its reply is read: one table for both
twins, which differ only in whether they ``await`` the call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _core as core
from ._redis import channel_name, entry_key, lease_key, tag_key


@dataclass(slots=True)
class Command:
    """``script`` names a Lua script of ``SCRIPTS``; otherwise ``command`` is GET or MGET."""

    script: str | None
    command: str
    keys: list[str]
    args: list[Any]
    parse: Callable[[Any], Any]


def _truthy(reply: Any) -> bool:
    return bool(reply)


def _acquired(reply: Any) -> tuple[int, Any]:
    return int(reply[0]), (reply[1] if len(reply) > 1 else None)


def _text(reply: Any) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def _as_is(reply: Any) -> Any:
    return reply


def command_for(op: core.Op, namespace: str, lease_ms: int) -> Command:
    if isinstance(op, core.L2Get):  # the hot one: every L2 read
        return Command(None, "get", [entry_key(namespace, op.name)], [], _as_is)
    if isinstance(op, core.TagRead):
        tags = op.tags

        def versions(reply: Any) -> dict[str, str]:
            # (a value hotpath never wrote reads as a version no entry was stored under)
            return {
                t: (v.decode(errors="replace") if v else "")
                for t, v in zip(tags, reply, strict=True)
            }

        return Command(None, "mget", [tag_key(namespace, t) for t in tags], [], versions)
    channel = channel_name(namespace)
    if isinstance(op, core.Acquire):
        keys = [entry_key(namespace, op.name), lease_key(namespace, op.name)]
        args = [op.token, lease_ms, "1" if op.skip_entry else "0"]
        return Command("acquire", "", keys, args, _acquired)
    if isinstance(op, core.Fill):
        keys = [entry_key(namespace, op.name), lease_key(namespace, op.name)]
        args = [op.token, op.payload, op.ttl_ms, channel, op.message]
        return Command("fill", "", keys, args, _truthy)
    if isinstance(op, core.Release):
        args = [op.token, channel, op.message]
        return Command("release", "", [lease_key(namespace, op.name)], args, _truthy)
    if isinstance(op, core.Write):
        keys = [entry_key(namespace, op.name), lease_key(namespace, op.name)]
        return Command("write", "", keys, [op.payload, op.ttl_ms, channel, op.message], _truthy)
    if isinstance(op, core.Delete):
        keys = [entry_key(namespace, op.name), lease_key(namespace, op.name)]
        return Command("delete", "", keys, [channel, op.message], _truthy)
    if isinstance(op, core.BumpTag):
        keys = [tag_key(namespace, op.tag)]
        return Command("bump_tag", "", keys, [channel, op.message], _text)
    raise AssertionError(f"not a Redis op: {op!r}")
