"""hotpath.demo: the before/after demonstrations behind hotpath's claims.

For now the smoke workload of the local stack: a write on the primary reaching each
streaming replica, real lag while a replica's replay is paused, and Redis round trips.
"""

from ._smoke import SmokeReport, run_smoke

__all__ = ["SmokeReport", "run_smoke"]
