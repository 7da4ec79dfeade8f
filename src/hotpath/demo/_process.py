"""Run the shop in a process of its own, so that the load generator and the server do not
share one interpreter lock and the measured latency is the server's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

import httpx

from .._errors import HotpathError
from ..stack._process import LOOPBACK, free_ports
from .shop.app import ShopSettings


class ShopServerError(HotpathError):
    """The shop server process did not come up."""


@contextmanager
def shop_server(settings: ShopSettings, timeout: float = 30.0) -> Iterator[str]:
    """Start ``python -m hotpath.demo.shop`` for ``settings``; yield its base URL."""
    port = free_ports(1)[0]
    env = {**os.environ, "HOTPATH_SHOP_SETTINGS": json.dumps(asdict(settings))}
    process = subprocess.Popen(
        [sys.executable, "-m", "hotpath.demo.shop", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://{LOOPBACK}:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                output = process.stderr.read() if process.stderr else ""
                raise ShopServerError(f"the shop server exited: {output[-800:]}")
            try:
                if httpx.get(f"{url}/__hotpath/stats", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ShopServerError(
                    f"the shop server did not answer on {url} within {timeout:.0f}s"
                )
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
