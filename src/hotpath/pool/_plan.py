"""PoolPlan: pool sizes from the workload and the server's real connection budget.

Pure arithmetic over :class:`ServerBudget` values (read from the servers by
:meth:`PoolPlan.for_app`, or given by :meth:`PoolPlan.from_settings`), plus the keyword
arguments that put the plan into SQLAlchemy, async SQLAlchemy and psycopg_pool.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .._validate import check_number
from ._budget import ServerBudget, read_server_budget
from ._errors import PoolConfigError
from ._options import PlanKeywords, PlanOptions, check_count
from ._pooler import driver_connect_args
from ._sa_pools import AsyncMeteredQueuePool, MeteredQueuePool

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._metrics import PoolMetrics


@dataclass(frozen=True, kw_only=True)
class PoolPlan(PlanOptions):
    """Per-process pool settings and the arithmetic behind them (see :meth:`explain`): the
    :class:`PlanOptions` it was made with (``pgbouncer`` the mode found, when detected) and
    what they gave."""

    processes: int
    concurrency_per_process: int
    pool_size: int
    max_overflow: int
    primary: ServerBudget
    replicas: tuple[ServerBudget, ...]
    replica_pool_size: int | None
    pgbouncer_detected: bool
    warnings: tuple[str, ...] = field(default=())

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def for_app(
        cls,
        *,
        processes: int,
        concurrency_per_process: int,
        server_url: str,
        replica_urls: Sequence[str] = (),
        other_clients: int | None = None,
        options: PlanOptions | None = None,
        **keywords: Unpack[PlanKeywords],
    ) -> PoolPlan:
        """Read each server's budget and size the pools of ``processes`` app processes.

        ``other_clients`` defaults to the client connections open on each server now (other
        apps, cron jobs, consoles); pass your own peak if now is not representative.
        The other options are the fields of :class:`PlanOptions`, given as keywords or as
        ``options=PlanOptions(...)`` (keywords override its fields). ``pgbouncer`` says the
        URLs point at a pooler in that mode; left out, a pooler is assumed (transaction mode)
        when the server answers on another port than dialled. ``server_cores`` defaults to
        this machine's cores when the server is on loopback.
        """
        _check_workload(processes, concurrency_per_process)
        chosen = PlanOptions.build(options, keywords)
        check_count("other_clients", other_clients, none_means="the clients connected now")
        primary = read_server_budget(server_url, "primary", other_clients)
        replicas = tuple(
            read_server_budget(url, f"replica{i}", other_clients)
            for i, url in enumerate(replica_urls, start=1)
        )
        if chosen.server_cores is None and _is_loopback(primary.host):
            chosen = replace(chosen, server_cores=os.cpu_count())
        return _compute(processes, concurrency_per_process, primary, replicas, chosen)

    @classmethod
    def from_settings(
        cls,
        *,
        processes: int,
        concurrency_per_process: int,
        max_connections: int,
        superuser_reserved_connections: int = 3,
        reserved_connections: int = 0,
        other_clients: int = 0,
        replicas: int = 0,
        options: PlanOptions | None = None,
        **keywords: Unpack[PlanKeywords],
    ) -> PoolPlan:
        """The same plan from settings you know (replicas assumed configured alike); the
        options as for :meth:`for_app`."""
        _check_workload(processes, concurrency_per_process)
        chosen = PlanOptions.build(options, keywords)
        check_number(
            PoolConfigError,
            "max_connections",
            max_connections,
            integer=True,
            at_least=1,
            meaning="the server's max_connections setting: SHOW max_connections",
        )
        check_count("superuser_reserved_connections", superuser_reserved_connections)
        check_count("reserved_connections", reserved_connections)
        check_count("other_clients", other_clients)
        check_count("replicas", replicas)

        def budget(name: str) -> ServerBudget:
            return ServerBudget(
                name,
                "",
                0,
                0,
                max_connections,
                superuser_reserved_connections,
                reserved_connections,
                other_clients,
                behind_proxy=False,
            )

        return _compute(
            processes,
            concurrency_per_process,
            budget("primary"),
            tuple(budget(f"replica{i}") for i in range(1, replicas + 1)),
            chosen,
        )

    # -- derived ---------------------------------------------------------------------------

    @property
    def transaction_pooler(self) -> bool:
        return self.pgbouncer == "transaction"

    @property
    def total_connections(self) -> int:
        """Server connections the app opens on the primary at peak, all processes together."""
        return self.processes * (self.pool_size + self.max_overflow)

    @property
    def fits(self) -> bool:
        return not self.warnings

    @property
    def useful_active(self) -> int | None:
        """HikariCP's ``core_count * 2 + effective_spindle_count`` for the server."""
        if self.server_cores is None:
            return None
        return self.server_cores * 2 + self.effective_spindles

    @property
    def max_processes_without_pooler(self) -> int:
        """How many processes of this concurrency fit the primary's budget directly."""
        return max(0, self.primary.available(self.headroom)) // self.concurrency_per_process

    def explain(self) -> str:
        """The arithmetic, in words."""
        demand = self.processes * self.concurrency_per_process
        lines = [
            f"Workload: {self.processes} processes x {self.concurrency_per_process} concurrent "
            f"requests = {demand} connections at peak if every request holds one.",
        ]
        for server in (self.primary, *self.replicas):
            where = f" at {server.host}:{server.port}" if server.port else ""
            version = (
                f" (PostgreSQL {server.server_version_num // 10000})"
                if server.server_version_num
                else ""
            )
            lines.append(
                f"{server.name}{where}{version}: {server.arithmetic(self.headroom)} "
                "connections available to this app."
            )
        if self.pgbouncer is not None:
            how = (
                "detected: the server answers on another port"
                if self.pgbouncer_detected
                else ("as configured")
            )
            lines.append(
                f"Pooler: {self.pgbouncer} pooling ({how}). Each process keeps "
                f"pool_size={self.pool_size} client connections to the pooler (cheap, ~2 kB "
                f"each); the pooler's server pool should stay within "
                f"{self.primary.available(self.headroom)}"
                + (f", ideally about {self.useful_active}" if self.useful_active else "")
                + "."
            )
        else:
            lines.append(
                f"Per process: pool_size={self.pool_size}, max_overflow={self.max_overflow} "
                f"(fixed size: connections are opened once, never on a request's path); "
                f"{self.processes} x {self.pool_size + self.max_overflow} = "
                f"{self.total_connections} on the primary."
            )
            if self.replica_pool_size is not None:
                lines.append(
                    f"Per process and replica: pool_size={self.replica_pool_size} "
                    f"({self.processes * self.replica_pool_size} on each replica)."
                )
        lines.append(
            f"Acquire timeout {self.timeout_s:g} s: a request that cannot get a connection "
            "fails fast with the pool's state and the holders, instead of piling up."
        )
        if self.useful_active is not None:
            lines.append(
                f"The server has {self.server_cores} cores: about {self.useful_active} queries "
                "do useful work at once (HikariCP: cores * 2 + effective spindles); "
                "connections beyond that wait inside PostgreSQL rather than in the pool, so "
                "a smaller pool with a queue usually gives a lower p99."
            )
            small = -(-self.useful_active // self.processes)  # ceil
            if self.pgbouncer is None and self.pool_size > 2 * small:
                lines.append(
                    f"If requests spend most of their time in SQL, try pool_size={small} per "
                    f"process ({self.processes} x {small} = {self.processes * small}) with the "
                    "same timeout, and compare p99 under load."
                )
        lines.extend(f"WARNING: {w}" for w in self.warnings)
        if self.pgbouncer is None:
            lines.append(
                f"PgBouncer: not needed up to {self.max_processes_without_pooler} processes of "
                f"{self.concurrency_per_process}; past that, put PgBouncer in transaction mode "
                "in front and plan again with pgbouncer='transaction'."
            )
        liveness = []
        if self.validate_idle_s is not None:
            liveness.append(f"ping only connections idle > {self.validate_idle_s:g} s")
        if self.max_lifetime_s is not None:
            liveness.append(
                f"max lifetime {self.max_lifetime_s:g} s minus up to "
                f"{self.lifetime_jitter:.0%} jitter"
            )
        if self.keepalives:
            liveness.append("TCP keepalives after 30 s idle (psycopg)")
        if self.leak_threshold_s is not None:
            liveness.append(f"leak report after {self.leak_threshold_s:g} s checked out")
        if liveness:
            lines.append("Liveness: " + "; ".join(liveness) + ".")
        return "\n".join(lines)

    # -- into the libraries ----------------------------------------------------------------

    def engine_kwargs(self, driver: str = "psycopg", *, replica: bool = False) -> dict[str, Any]:
        """``create_engine(url, **plan.engine_kwargs())``; then ``plan.instrument(engine)``.

        ``replica=True``: the size planned for each replica's pool.
        """
        return self._sqlalchemy_kwargs(MeteredQueuePool, driver, replica)

    def async_engine_kwargs(
        self, driver: str = "asyncpg", *, replica: bool = False
    ) -> dict[str, Any]:
        """``create_async_engine(url, **plan.async_engine_kwargs())``."""
        return self._sqlalchemy_kwargs(AsyncMeteredQueuePool, driver, replica)

    def psycopg_pool_kwargs(self, *, replica: bool = False) -> dict[str, Any]:
        """``MeteredConnectionPool(conninfo, **plan.psycopg_pool_kwargs())`` (or ConnectionPool)."""
        size = self._size(replica)
        kwargs: dict[str, Any] = {
            "min_size": size,
            "max_size": size + self.max_overflow,
            "timeout": self.timeout_s,
            "kwargs": self._connect_args("psycopg"),
        }
        if self.max_lifetime_s is not None:
            kwargs["max_lifetime"] = self.max_lifetime_s  # psycopg_pool adds -5% jitter itself
        return kwargs

    def instrument(self, target: Any, name: str | None = None) -> PoolMetrics:
        """``instrument_pool`` with this plan's liveness and leak settings."""
        from ._instrument import instrument_pool  # noqa: PLC0415 - avoids an import cycle

        return instrument_pool(
            target,
            name=name,
            leak_threshold_s=self.leak_threshold_s,
            validate_idle_s=self.validate_idle_s,
            max_lifetime_s=self.max_lifetime_s,
            lifetime_jitter=self.lifetime_jitter,
            transaction_pooler=self.transaction_pooler,
        )

    def _size(self, replica: bool) -> int:
        if not replica:
            return self.pool_size
        if self.replica_pool_size is None:
            raise PoolConfigError(
                "this plan has no replicas: pass replica_urls= to PoolPlan.for_app (or "
                "replicas= to from_settings) to size replica pools"
            )
        return self.replica_pool_size

    def _sqlalchemy_kwargs(self, poolclass: type, driver: str, replica: bool) -> dict[str, Any]:
        return {
            "poolclass": poolclass,
            "pool_size": self._size(replica),
            "max_overflow": self.max_overflow,
            "pool_timeout": self.timeout_s,
            # liveness comes from instrument_pool: ping only idle connections, jittered lifetime
            "pool_pre_ping": False,
            "pool_recycle": -1,
            # LIFO keeps the hottest connections in use, so they skip the idle ping
            "pool_use_lifo": True,
            "connect_args": self._connect_args(driver),
        }

    def _connect_args(self, driver: str) -> dict[str, Any]:
        if driver not in {"psycopg", "asyncpg"}:
            raise PoolConfigError(f"driver {driver!r} is not supported: use 'psycopg' or 'asyncpg'")
        return driver_connect_args(
            driver,
            transaction_pooler=self.transaction_pooler,
            keepalives=self.keepalives,
            connect_timeout_s=10.0,
        )


def _check_workload(processes: int, concurrency: int) -> None:
    check_number(
        PoolConfigError,
        "processes",
        processes,
        integer=True,
        at_least=1,
        meaning="count worker processes across every host",
    )
    check_number(
        PoolConfigError,
        "concurrency_per_process",
        concurrency,
        integer=True,
        at_least=1,
        meaning="the requests or tasks one process serves at once",
    )


def _is_loopback(host: str) -> bool:
    if host in {"localhost", ""} or host.startswith("/"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _compute(
    processes: int,
    concurrency: int,
    primary: ServerBudget,
    replicas: tuple[ServerBudget, ...],
    options: PlanOptions,
) -> PoolPlan:
    headroom = options.headroom
    detected = options.pgbouncer is None and primary.behind_proxy
    mode = "transaction" if detected else options.pgbouncer
    demand = processes * concurrency
    warnings: list[str] = []
    if mode is not None:
        # Client connections to a pooler are cheap; the pooler owns the server budget.
        pool_size = concurrency
        replica_size = concurrency if replicas else None
    else:
        pool_size = _share(primary, processes, concurrency, headroom, demand, warnings)
        replica_size = None
        for replica in replicas:
            share = _share(replica, processes, concurrency, headroom, demand, warnings)
            replica_size = share if replica_size is None else min(replica_size, share)
    return PoolPlan(
        **(options.items() | {"pgbouncer": mode}),
        processes=processes,
        concurrency_per_process=concurrency,
        pool_size=pool_size,
        max_overflow=0,
        primary=primary,
        replicas=replicas,
        replica_pool_size=replica_size,
        pgbouncer_detected=detected,
        warnings=tuple(warnings),
    )


def _share(
    server: ServerBudget,
    processes: int,
    concurrency: int,
    headroom: int,
    demand: int,
    warnings: list[str],
) -> int:
    available = server.available(headroom)
    if demand <= available:
        return concurrency
    share = max(1, available // processes)
    warnings.append(
        f"{server.name}: {processes} processes x {concurrency} = {demand} connections exceed "
        f"the {max(0, available)} available ({server.arithmetic(headroom)}); capped at "
        f"pool_size={share} per process, so up to {concurrency - share} requests per process "
        "queue for a connection. Put PgBouncer in transaction mode in front "
        "(PoolPlan.for_app(..., pgbouncer='transaction')), or raise max_connections."
    )
    return share
