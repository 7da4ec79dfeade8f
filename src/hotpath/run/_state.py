"""The RUN STATE: the latest WORKER STATE of every process of a run, merged.

Each worker's observe snapshot is cumulative, so the latest file of each is all it takes;
pools, caches, replica sets and breakers are listed per worker (each item with its ``pid``);
what was not instrumented is listed once per thing and reason, with the pids that hit it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import psutil

if TYPE_CHECKING:
    from ..observe import ObserveSettings, Report

PER_WORKER = ("pools", "caches", "routing", "breakers")


def read_workers(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The latest state file of each worker (a file being replaced is read whole or not at
    all: workers write a temporary file and rename it)."""
    workers = []
    for path in sorted(Path(run_dir).glob("worker-*.json")):
        try:
            state = orjson.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and isinstance(state.get("pid"), int):
            workers.append(state)
    return workers


def merge_states(
    workers: list[dict[str, Any]],
    settings: ObserveSettings,
    *,
    doctor: list[dict[str, Any]] | None = None,
    notes: list[dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], Report]:
    """(RUN STATE, the merged observe report) of ``workers``' states."""
    from ..observe import merge_reports  # noqa: PLC0415 - heavy; the CLI's --help stays fast

    report = merge_reports([w["observe"] for w in workers if w.get("observe")], settings)
    state: dict[str, Any] = {
        "report": report.to_dict(),
        "workers": [
            {
                "pid": w["pid"],
                "argv": w.get("argv", []),
                "started": w.get("started"),
                "written": w.get("written"),
                "scopes": w.get("scopes", 0),
                "final": bool(w.get("final")),
                "alive": _alive(w["pid"]),
            }
            for w in workers
        ],
        "doctor": list(doctor or []),
    }
    for key in PER_WORKER:
        state[key] = [
            {**item, "pid": w["pid"]} for w in workers for item in w.get(key) or [] if item
        ]
    merged: dict[tuple[str, str], dict[str, Any]] = {}

    def add(item: dict[str, Any], pid: int | None) -> None:
        key = (str(item.get("what")), str(item.get("why")))
        entry = merged.setdefault(key, {"what": key[0], "why": key[1], "pids": []})
        if pid is not None and pid not in entry["pids"]:
            entry["pids"].append(pid)

    for item in notes or []:
        add(item, None)
    for w in workers:
        for item in w.get("uninstrumented") or []:
            add(item, w["pid"])
    state["uninstrumented"] = list(merged.values())
    return state, report


def final_state_gaps(workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the report of a finished run lacks, per worker: the figures after its last state
    when it ended without writing its final one (killed), or the requests still running
    when it wrote it (they never concluded)."""
    gaps = []
    for w in workers:
        what = f"worker {w['pid']} ({' '.join(w.get('argv') or [])})"
        if not w.get("final"):
            gaps.append(
                {
                    "what": what,
                    "why": "it ended without writing its final state (killed?): what it "
                    "recorded after its last state, written every second, is missing",
                }
            )
        elif w.get("in_flight"):
            gaps.append(
                {
                    "what": what,
                    "why": f"{w['in_flight']} request(s)/test(s) were still running when it "
                    "wrote its final state: they are not in the report",
                }
            )
    return gaps


def run_state(
    run_dir: str | os.PathLike[str],
    settings: ObserveSettings,
    *,
    doctor: list[dict[str, Any]] | None = None,
    notes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The RUN STATE of the run whose workers write into ``run_dir``."""
    return merge_states(read_workers(run_dir), settings, doctor=doctor, notes=notes)[0]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
