"""Run the shop in a process of its own, so that the load generator and the server do not
share one interpreter lock and the measured latency is the server's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import httpx

from .._errors import HotpathError
from ..stack._process import LOOPBACK, free_ports
from .shop.app import ShopSettings
from .shop.server import SETTINGS_ENV, ServerOptions


class ShopServerError(HotpathError):
    """The shop server process did not come up."""


@dataclass(frozen=True)
class ShopServer:
    """A running shop server: its base URL and its log (stderr, kept in a file so that a
    chatty server never blocks on a full pipe)."""

    url: str
    log_path: Path
    pid: int | None = None  # the server process (uvicorn's parent when it has workers)

    def errors(self, limit: int = 5) -> list[str]:
        """The distinct exceptions the server logged (the last line of each traceback)."""
        text = self.log_path.read_text(errors="replace")
        found: list[str] = []
        for block in text.split("Traceback (most recent call last):")[1:]:
            lines = [line for line in block.splitlines() if line and not line[0].isspace()]
            if lines and lines[0] not in found:
                found.append(lines[0])
        return found[:limit]


@contextmanager
def shop_server(
    settings: ShopSettings,
    timeout: float = 30.0,
    options: ServerOptions | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[ShopServer]:
    """Start ``python -m hotpath.demo.shop`` for ``settings`` (``settings.workers`` uvicorn
    worker processes, the server's ``options``, and ``env`` added to this process's
    environment); yield it once every worker answers."""
    port = free_ports(1)[0]
    with tempfile.TemporaryDirectory(prefix="hotpath-shop-") as directory:
        # where the workers answer the runner's calls as one server
        state_dir = Path(directory) / "workers"
        state_dir.mkdir()
        options = replace(options or ServerOptions(), state_dir=str(state_dir))
        environment = {
            **os.environ,
            **(env or {}),
            SETTINGS_ENV: json.dumps(asdict(settings)),
            **options.to_env(),
        }
        log_path = Path(directory) / "server.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "hotpath.demo.shop", str(port)],
                env=environment,
                stdout=subprocess.DEVNULL,
                stderr=log,
                text=True,
            )
        url = f"http://{LOOPBACK}:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    output = log_path.read_text(errors="replace")
                    raise ShopServerError(f"the shop server exited: {output[-800:]}")
                try:
                    # answered once every worker has written its state (see shop.workers)
                    if httpx.get(f"{url}/__hotpath/cpu", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise ShopServerError(
                        f"the shop server did not answer on {url} within {timeout:.0f}s"
                    )
                time.sleep(0.1)
            yield ShopServer(url, log_path, process.pid)
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
