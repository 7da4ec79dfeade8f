"""hotpath.metrics: every hotpath signal of a run as one Prometheus exposition.

- :class:`RunStateCollector`: a ``prometheus_client`` collector reading a RUN STATE (what
  ``hotpath run`` merges from its workers, see ``docs/dashboard.md``) at scrape time: per
  endpoint (route template) its requests, latency quantiles and time per layer; the fixes'
  savings by kind; pools, caches, replica sets, circuit breakers, doctor's findings. Every
  label set is bounded (route templates, layers, finding kinds, pool / cache / breaker /
  replica-set names), never a raw path or a process id.
- :func:`exposition`: the text format of one RUN STATE, for a ``/metrics`` handler.

``grafana/hotpath.json`` in the repository is a dashboard reading these metrics.
"""

from ._collector import RunStateCollector, exposition, merge_pools

__all__ = ["RunStateCollector", "exposition", "merge_pools"]
