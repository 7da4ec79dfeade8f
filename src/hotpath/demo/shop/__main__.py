"""``python -m hotpath.demo.shop PORT``: serve one configuration of the shop on 127.0.0.1.

Settings come as JSON in ``HOTPATH_SHOP_SETTINGS`` (the demo runner writes them), the
server's own options in ``HOTPATH_SHOP_SERVER`` (see :mod:`.server`, which also lists the
runner's ``/__hotpath`` endpoints).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import fields

import uvicorn

from .app import ShopSettings
from .fixes import Fixes
from .server import ServerOptions, build


def main() -> None:
    raw = json.loads(os.environ["HOTPATH_SHOP_SETTINGS"])
    raw["fixes"] = Fixes(**raw.get("fixes", {}))
    settings = ShopSettings(**{f.name: raw[f.name] for f in fields(ShopSettings) if f.name in raw})
    port = int(sys.argv[1])
    app = build(settings, ServerOptions.from_env())
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
