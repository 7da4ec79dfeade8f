"""hotpath.demo: the before/after demonstrations behind hotpath's claims.

For now the smoke workload of the local stack: a write on the primary reaching each
streaming replica, real lag while a replica's replay is paused, and Redis round trips.
"""

from pathlib import Path

from .._frames import treat_as_application
from ._smoke import SmokeReport, run_smoke

# The shop is the application the demo diagnoses: findings name its lines, not hotpath's.
treat_as_application(Path(__file__).parent)

__all__ = ["SmokeReport", "run_smoke"]
