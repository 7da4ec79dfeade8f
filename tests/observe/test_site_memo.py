"""``SiteMemo``: a recurring operation's call site is walked at its 1st, 2nd, 4th, 8th...
occurrence and remembered in between, so that a served app walks its stack rarely."""

from __future__ import annotations

import linecache
from pathlib import Path
from types import FrameType

import pytest

from hotpath.observe import _callsite
from hotpath.observe._callsite import SiteMemo
from hotpath.observe._records import CallSite


def _issue(memo: SiteMemo, key: str) -> CallSite | None:
    return memo.site(key)  # the application line: this one


@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> list[FrameType | None]:
    """The stack walks taken from now on (the frame each started from)."""
    taken: list[FrameType | None] = []
    real = _callsite._first_app_frame

    def counting(frame: FrameType | None) -> tuple[FrameType | None, bool]:
        taken.append(frame)
        return real(frame)

    monkeypatch.setattr(_callsite, "_first_app_frame", counting)
    return taken


def test_walked_at_powers_of_two_and_remembered_between(walks: list[FrameType | None]) -> None:
    memo = SiteMemo()
    sites = [_issue(memo, "GET user:{n}") for _ in range(100)]
    # walked at the 1st, 2nd, 4th, 8th, 16th, 32nd and 64th occurrence only
    assert len(walks) == 7
    assert len({(s.filename, s.lineno) for s in sites if s is not None}) == 1
    assert sites[0] is not None
    assert sites[0].function == "_issue"
    # another key is walked on its own schedule
    _issue(memo, "SET user:{n}")
    assert len(walks) == 8


def test_keys_past_the_bound_are_walked_each_time_and_not_remembered(
    walks: list[FrameType | None],
) -> None:
    memo = SiteMemo(max_keys=2)
    for key in ("a", "b", "c", "c", "c"):
        _issue(memo, key)
    # "a" and "b" remembered; "c" is past the bound: walked each of its three times
    assert len(walks) == 5
    _issue(memo, "a")  # "a"'s second occurrence: a power of two, walked
    _issue(memo, "a")  # its third: remembered
    assert len(walks) == 6


def test_an_ignore_comment_added_to_a_reloaded_file_is_seen(tmp_path: Path) -> None:
    """``# hotpath: ignore`` is parsed once per line text, not once per line number: a file
    edited while the process runs (``linecache.checkcache`` reloads it: a traceback, a
    notebook's autoreload) is judged by its new text."""
    source = tmp_path / "app.py"
    source.write_text("rows = session.execute(query)\n")
    site = CallSite(str(source), 1, "view")
    assert not _callsite.ignored_at(site, "n_plus_one")
    source.write_text("rows = session.execute(query)  # hotpath: ignore[n_plus_one]\n")
    assert not _callsite.ignored_at(site, "n_plus_one")  # linecache still has the old text
    linecache.checkcache(str(source))
    assert _callsite.ignored_at(site, "n_plus_one")
    assert not _callsite.ignored_at(site, "duplicate")
