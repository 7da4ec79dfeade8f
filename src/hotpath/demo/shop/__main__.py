"""``python -m hotpath.demo.shop PORT``: serve one configuration of the shop on 127.0.0.1.

Settings come as JSON in ``HOTPATH_SHOP_SETTINGS`` (the demo runner writes them), the
server's own options in ``HOTPATH_SHOP_SERVER`` (see :mod:`.server`, which also lists the
runner's ``/__hotpath`` endpoints). With ``ShopSettings.workers`` above 1, uvicorn runs that
many worker processes, each building the app from the same environment.
"""

from __future__ import annotations

import sys

import uvicorn

from .server import settings_from_env


def main() -> None:
    port = int(sys.argv[1])
    uvicorn.run(
        "hotpath.demo.shop.server:from_env",
        factory=True,
        host="127.0.0.1",
        port=port,
        workers=settings_from_env().workers,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
