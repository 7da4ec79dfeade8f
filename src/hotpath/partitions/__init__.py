"""hotpath.partitions: keep a table range-partitioned by time.

- :func:`ensure_partitions` / :func:`ensure_partitions_async` — the current period's and the
  next ``ahead`` periods' partitions, idempotent, under an advisory lock.
- :func:`detach_older_than` / :func:`detach_older_than_async` — detach (optionally drop) old
  partitions.
- :func:`default_partition_rows` — rows stuck in the DEFAULT partition.
- :func:`convert_to_partitioned` (``_async``) — partition a live table online, resumable
  (:func:`resume_conversion`, :func:`abort_conversion`, :func:`conversion_state`).
- :func:`create_hash_partitioned`, :func:`inspect_hash`, :func:`repartition_hash` (``_async``)
  — hash partitioning: create, inspect, change the partition count online.
"""

from ._convert import (
    ConversionError,
    ConversionResult,
    ConvertOptions,
    PartitionKind,
    Phase,
    Progress,
    abort_conversion,
    conversion_state,
    convert_to_partitioned,
    convert_to_partitioned_async,
    repartition_hash,
    repartition_hash_async,
    resume_conversion,
    resume_conversion_async,
)
from ._hash import (
    HashPartition,
    HashPartitionedTable,
    create_hash_partitioned,
    create_hash_partitioned_async,
    inspect_hash,
    inspect_hash_async,
)
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
    "ConversionError",
    "ConversionResult",
    "ConvertOptions",
    "HashPartition",
    "HashPartitionedTable",
    "Interval",
    "Partition",
    "PartitionError",
    "PartitionKind",
    "PartitionedTable",
    "Phase",
    "Progress",
    "abort_conversion",
    "conversion_state",
    "convert_to_partitioned",
    "convert_to_partitioned_async",
    "create_hash_partitioned",
    "create_hash_partitioned_async",
    "default_partition_rows",
    "detach_older_than",
    "detach_older_than_async",
    "ensure_partitions",
    "ensure_partitions_async",
    "inspect_hash",
    "inspect_hash_async",
    "inspect_table",
    "repartition_hash",
    "repartition_hash_async",
    "resume_conversion",
    "resume_conversion_async",
]
