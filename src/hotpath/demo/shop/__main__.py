"""``python -m hotpath.demo.shop PORT``: serve one configuration of the shop on 127.0.0.1.

Settings come as JSON in ``HOTPATH_SHOP_SETTINGS`` (the demo runner writes them), the
server's own options in ``HOTPATH_SHOP_SERVER`` (see :mod:`.server`, which also lists the
runner's ``/__hotpath`` endpoints). With ``ShopSettings.workers`` above 1, that many uvicorn
worker processes serve the port, each building the app from the same environment.

Each worker listens on a socket of its own, bound with ``SO_REUSEPORT``, and the kernel spreads
new connections over them; uvicorn's own ``--workers`` shares one socket, and the first worker
to wake accepts every connection waiting, and the load generator's users, each connecting
once and keeping the connection, can all land on one worker (measured: 5 of the 9 steps of a
2-worker demo run had every request on one worker; none with a socket per worker).
``gunicorn --reuse-port`` and nginx's ``reuseport`` do the same.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import signal
import sys
from types import FrameType

import uvicorn

from ...stack._process import LOOPBACK
from .server import APP_FACTORY, serve_worker, settings_from_env


def main() -> None:
    port = int(sys.argv[1])
    workers = settings_from_env().workers
    if workers == 1:
        uvicorn.run(
            APP_FACTORY,
            factory=True,
            host=LOOPBACK,
            port=port,
            log_level="warning",
            access_log=False,
        )
        return
    context = multiprocessing.get_context("spawn")  # each worker imports the app afresh
    processes = [
        context.Process(target=serve_worker, args=(port,), name=f"shop-worker-{number}")
        for number in range(workers)
    ]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn's graceful shutdown, lifespan included

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for process in processes:
        process.start()
    # the server is its workers: once one of them is gone (its error is in the log), the
    # others go too, and the runner sees the server exit rather than answer with fewer
    multiprocessing.connection.wait([process.sentinel for process in processes])
    if not stopping:
        stop(signal.SIGTERM, None)
    for process in processes:
        process.join()
    failed = any(process.exitcode for process in processes)
    sys.exit(1 if failed and not stopping else 0)


if __name__ == "__main__":
    main()
