"""hotpath.partitions: keep a table range-partitioned by time.

- :func:`ensure_partitions` / :func:`ensure_partitions_async` — the current period's and the
  next ``ahead`` periods' partitions, idempotent, under an advisory lock.
- :func:`detach_older_than` / :func:`detach_older_than_async` — detach (optionally drop) old
  partitions.
- :func:`default_partition_rows` — rows stuck in the DEFAULT partition.
"""

from ._maintain import (
    Interval,
    Partition,
    PartitionedTable,
    PartitionError,
    default_partition_rows,
    detach_older_than,
    detach_older_than_async,
    ensure_partitions,
    ensure_partitions_async,
    inspect_table,
)

__all__ = [
    "Interval",
    "Partition",
    "PartitionError",
    "PartitionedTable",
    "default_partition_rows",
    "detach_older_than",
    "detach_older_than_async",
    "ensure_partitions",
    "ensure_partitions_async",
    "inspect_table",
]
