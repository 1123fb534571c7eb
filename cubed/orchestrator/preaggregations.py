"""Pre-aggregation tables in the data source: which built table answers a request, building
one when there is none, and the refresh pass that keeps them current.

Each pre-aggregation (per time zone, per partition) has a logical table
(``<schema>.<cube>_<name>[<partition start>]``) and physical versions named by
``cubed/orchestrator/partitions.py``. A table's structure version is the digest of its load
SQL, its content version the digest of the load SQL with the refresh-key values. On a request
(Cube's loader):

- a table with the current content answers;
- else a table with the current structure answers at once and a rebuild is queued;
- else the table is built now and the request waits for it (Continue wait when slow);
- with ``CUBEJS_ROLLUP_ONLY`` nothing is built: a table of the structure answers, or Cube's
  error.

Builds run on the data source's pre-aggregation queue (``SQL_PRE_AGGREGATIONS_<id>_<source>``),
one execution per content version across every process. After a build, a clean-up job on the
same queue - its single execution per table is the lock - drops the versions the build
superseded: never the newest of a structure version, never one a request has read in the last
``TOUCH_WINDOW`` seconds.

Refresh keys: the pre-aggregation's own (``every`` from the clock, ``sql`` on the database), else
the cube's SQL key, else ``every: 1 hour``. An ``incremental`` partition whose end is further in
the past than its ``update_window`` is frozen: its key is no longer read and it is not rebuilt.
"""
from __future__ import annotations

import json
import zoneinfo
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone as dt_timezone
from typing import Any, Callable, Mapping

import sqlglot
from sqlglot import exp
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, gatherResults
from twisted.logger import Logger

from cubed.deferreds import gather
from cubed.drivers.base import Column, Driver, ResultSet
from cubed.errors import CompileError, ContinueWait, CubedError, DatabaseError, UserError
from cubed.metrics import Metrics
from cubed.model.intervals import Every, renewal_threshold
from cubed.model.preaggregations import PreAggregation
from cubed.orchestrator.cache import QueryCache, digest
from cubed.orchestrator.partitions import (Partition, TableVersion, local_time, overlaps, parse_table_name,
                                           partitions, physical_name, version)
from cubed.orchestrator.queue import QueryQueue, QueueOptions
from cubed.orchestrator.refresh_keys import RefreshKey, refresh_key_of
from cubed.orchestrator.stores import CacheStore, QueuedQuery, QueueStore
from cubed.query.rollup_sql import column_name, logical_table_name, time_column_name
from cubed.query.sql import RenderedSql, render_sql

ROLLUP_ONLY_ERROR = ("Your configuration restricts query requests to only be served from pre-aggregations, and "
                     "required pre-aggregation partitions were not built yet. Please make sure your refresh worker "
                     "is configured correctly and running.")
DEFAULT_EVERY = 3600.0
TOUCH_WINDOW = 600.0
TOUCH_THROTTLE = 60.0
TABLE_LIST_TTL = 5.0
STRUCTURE_PERSIST = 30 * 86400.0
TARGET_MEMO = 20000
REQUEST_PRIORITY = 10
#: Seconds a build nobody waits for (queued by a refresh pass, or a rebuild behind an older
#: table that still answers) stays queued without being asked for again (Cube gives
#: refresh-scheduler jobs an hour).
REFRESH_ORPHANED_TIMEOUT = 3600.0
# _<content>_<structure>_<seconds in base 32>: 1 + 8 + 1 + 8 + 1 + 7 characters.
VERSION_SUFFIX_LENGTH = 26
IDENTIFIER_LIMITS = {"postgres": 63, "mysql": 64}


@dataclass(frozen=True)
class BuildTarget:
    """One table to have built: a pre-aggregation in a time zone (one partition of it)."""

    pre_aggregation: PreAggregation
    data_source: str
    schema: str
    logical: str
    timezone: str
    select: Any                   # BuildSelect: the SELECT the table is created from
    index_columns: tuple[tuple[str, tuple[str, ...]], ...]
    create: RenderedSql           # CREATE TABLE <schema>.<logical> AS ... (what versions digest)
    indexes: tuple[RenderedSql, ...]
    keys: tuple[RefreshKey, ...]
    partition: Partition | None
    structure: str

    def content(self, values: list[Any]) -> str:
        """Return the content version for the refresh-key values."""
        return version(self._load_sql() + [values])

    def _load_sql(self) -> list[Any]:
        load = [self.create.display, list(self.create.params)]
        return [load, [[i.display, list(i.params)] for i in self.indexes]] if self.indexes else [load]

    @property
    def qualified(self) -> str:
        """Return ``<schema>.<logical>``."""
        return f"{self.schema}.{self.logical}"


@dataclass(frozen=True)
class TargetState:
    """Where one target stands in a refresh pass."""

    target: BuildTarget
    state: str  # done | queued | running | failed
    error: str | None = None


@dataclass(frozen=True)
class RefreshProgress:
    """What a refresh pass found and queued."""

    states: tuple[TargetState, ...] = ()

    def count(self, state: str) -> int:
        """Return how many targets are in ``state``."""
        return sum(1 for s in self.states if s.state == state)

    @property
    def finished(self) -> bool:
        """Return whether every target is built with current content."""
        return all(s.state == "done" for s in self.states)

    def as_json(self) -> dict[str, int]:
        """Return the progress object cubed adds to Continue wait (beyond Cube)."""
        return {"total": len(self.states), "done": self.count("done"), "queued": self.count("queued"),
                "running": self.count("running"), "failed": self.count("failed")}


def _qualified_table(schema: str, name: str) -> exp.Table:
    return exp.Table(this=exp.to_identifier(name, quoted=False), db=exp.to_identifier(schema, quoted=False))


def create_table(schema: str, name: str, select: exp.Expression) -> exp.Create:
    """Return ``CREATE TABLE <schema>.<name> AS <select>``."""
    return exp.Create(this=_qualified_table(schema, name), kind="TABLE", expression=select)


def create_index(schema: str, table: str, index: str, columns: tuple[str, ...]) -> exp.Expression:
    """Return ``CREATE INDEX <index> ON <schema>.<table> (<columns>)``."""
    params = exp.IndexParameters(columns=[exp.Ordered(this=exp.column(c, quoted=True)) for c in columns])
    return exp.Create(this=exp.Index(this=exp.to_identifier(index), table=_qualified_table(schema, table),
                                     params=params), kind="INDEX")


class PreAggregationLoader:
    """Pre-aggregation tables of one orchestrator: its pre-aggregation queues (one per data
    source), the tables it knows of, and the targets of each compiled model."""

    log = Logger()

    def __init__(self, orchestrator_id: str, drivers: Mapping[str, Driver], queue_store: QueueStore,
                 cache: QueryCache, cache_store: CacheStore, options: Mapping[str, QueueOptions], clock: Any,
                 rollup_only: bool = False, metrics: Metrics | None = None) -> None:
        self.orchestrator_id = orchestrator_id
        self.metrics = metrics if metrics is not None else Metrics.disabled()
        self.drivers = dict(drivers)
        self.cache = cache
        self.cache_store = cache_store
        self.clock = clock
        self.rollup_only = rollup_only
        self.queues: dict[str, QueryQueue] = {}
        for name, driver in self.drivers.items():
            queue_options = options.get(name, QueueOptions())
            self.queues[name] = QueryQueue(f"SQL_PRE_AGGREGATIONS_{orchestrator_id}_{name}", queue_store,
                                           self._executor(name, driver), queue_options, clock)
        self._tables: dict[tuple[str, str], tuple[float, list[TableVersion]]] = {}
        self._touched: dict[str, float] = {}
        self._targets: OrderedDict[tuple[Any, ...], BuildTarget] = OrderedDict()
        self.builds = 0

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Deferred[Any]:
        """Start the pre-aggregation queues."""
        return gatherResults([queue.start() for queue in self.queues.values()], consumeErrors=True)

    def stop(self) -> None:
        """Stop the queues (builds this process runs are cancelled)."""
        for queue in self.queues.values():
            queue.stop()

    def queue(self, data_source: str) -> QueryQueue:
        """Return the pre-aggregation queue of a data source."""
        queue = self.queues.get(data_source)
        if queue is None:
            raise CompileError(f"Unknown data source '{data_source}'")
        return queue

    # -- targets -------------------------------------------------------------------------
    def refresh_keys(self, compiled: Any, pre_aggregation: PreAggregation) -> tuple[RefreshKey, ...]:
        """Return a pre-aggregation's refresh keys (its own, the cube's SQL key, or hourly)."""
        model = compiled.model
        cube = model.cubes[pre_aggregation.cube]
        data_source = cube.data_source
        dialect = self.drivers[data_source].dialect if data_source in self.drivers else "postgres"
        refresh = pre_aggregation.refresh
        if refresh.sql is not None:
            threshold = refresh.every.seconds if refresh.every is not None else 10.0
            sql = render_sql(sqlglot.parse_one(refresh.sql, read=dialect), [], dialect)
            return (RefreshKey(pre_aggregation.id, data_source, None, sql, threshold),)
        if refresh.every is not None:
            return (RefreshKey(pre_aggregation.id, data_source, refresh.every, None, renewal_threshold(refresh.every.seconds)),)
        cube_key = refresh_key_of(cube, dialect)
        if cube_key.sql is not None:
            return (cube_key,)
        return (RefreshKey(pre_aggregation.id, data_source, Every(DEFAULT_EVERY), None, renewal_threshold(DEFAULT_EVERY)),)

    def _target(self, compiled: Any, pre_aggregation: PreAggregation, zone: str, partition: Partition | None,
                security_context: Mapping[str, Any] | None = None) -> BuildTarget:
        memo_key = (id(compiled), pre_aggregation.id, zone, partition.suffix if partition else None,
                    context_key(compiled, security_context))
        found = self._targets.get(memo_key)
        if found is not None and found.pre_aggregation is pre_aggregation:
            self._targets.move_to_end(memo_key)
            return found
        model = compiled.model
        planner = compiled.planner
        schema = planner.pre_aggregations_schema
        data_source = model.cubes[pre_aggregation.cube].data_source
        if self.drivers.get(data_source) is not None and self.drivers[data_source].dialect == "sqlite":
            raise UserError(f"Pre-aggregation {pre_aggregation.id}: SQLite data sources cannot hold pre-aggregations "
                            "(they have no schemas); remove it or use another data source")
        logical = logical_table_name(model, pre_aggregation) + (partition.suffix if partition else "")
        limit = IDENTIFIER_LIMITS.get(self.drivers[data_source].dialect) if data_source in self.drivers else None
        if limit is not None and len(logical) + VERSION_SUFFIX_LENGTH > limit:
            # The database would cut the versioned name and lose the version in it.
            raise UserError(f"Pre-aggregation {pre_aggregation.id}: its table name {logical} is too long for "
                            f"{self.drivers[data_source].dialect} ({len(logical)} characters plus "
                            f"{VERSION_SUFFIX_LENGTH} of version suffix, at most {limit}); give it a shorter sql_alias")
        # The cubes' SQL is rendered for the security context: its values are bound parameters
        # of the load SQL, so each context's table has its own versions (as in Cube).
        select = planner.plan_rollup_build(pre_aggregation, zone, partition.date_range if partition else None,
                                           security_context)
        create = select.render(lambda tree: create_table(schema, logical, tree))
        index_columns = tuple((name, tuple(self._index_column(model, pre_aggregation, c) for c in columns))
                              for name, columns in pre_aggregation.indexes)
        indexes = tuple(render_sql(create_index(schema, logical, name, columns), [], select.dialect)
                        for name, columns in index_columns)
        load = [create.display, list(create.params)]
        structure = version([load, [[i.display, []] for i in indexes]] if indexes else load)
        target = BuildTarget(pre_aggregation=pre_aggregation, data_source=data_source, schema=schema, logical=logical,
                             timezone=zone, select=select, index_columns=index_columns, create=create, indexes=indexes,
                             keys=self.refresh_keys(compiled, pre_aggregation), partition=partition,
                             structure=structure)
        self._targets[memo_key] = target
        while len(self._targets) > TARGET_MEMO:
            self._targets.popitem(last=False)
        return target

    @staticmethod
    def _index_column(model: Any, pre_aggregation: PreAggregation, path: str) -> str:
        if path == pre_aggregation.time_dimension:
            column = time_column_name(model, pre_aggregation)
            assert column is not None
            return column
        return column_name(model, path)

    async def targets(self, compiled: Any, pre_aggregation: PreAggregation, zone: str,
                      date_range: tuple[str, str] | None = None, renew: bool = False,
                      request_id: str = "", security_context: Mapping[str, Any] | None = None) -> list[BuildTarget]:
        """Return the tables a pre-aggregation has in a time zone for a security context (its
        partitions that hold rows of ``date_range``, oldest first; none when its build range
        is empty)."""
        if pre_aggregation.partition_granularity is None or pre_aggregation.type != "rollup":
            return [self._target(compiled, pre_aggregation, zone, None, security_context)]
        bounds = await self.build_range(compiled, pre_aggregation, zone, renew, request_id, security_context)
        if bounds is None:
            return []
        try:
            found = partitions(bounds[0], bounds[1], pre_aggregation.partition_granularity, zone)
        except ValueError as error:
            raise UserError(f"Pre-aggregation {pre_aggregation.id}: {error}; narrow its build range") from None
        return [self._target(compiled, pre_aggregation, zone, p, security_context)
                for p in found if overlaps(p, date_range)]

    async def build_range(self, compiled: Any, pre_aggregation: PreAggregation, zone: str, renew: bool = False,
                          request_id: str = "",
                          security_context: Mapping[str, Any] | None = None) -> tuple[datetime, datetime] | None:
        """Return the local time range a partitioned pre-aggregation covers: its
        ``build_range_start``/``_end`` (instants, shown in ``zone``) or the min and max of its
        time dimension over the security context's rows; None when there are no rows."""
        data_source = compiled.model.cubes[pre_aggregation.cube].data_source
        dialect = self.drivers[data_source].dialect
        keys = self.refresh_keys(compiled, pre_aggregation)
        ttl = max(10.0, min(k.renewal_threshold for k in keys))
        if pre_aggregation.build_range_start is not None or pre_aggregation.build_range_end is not None:
            bounds_sql = compiled.planner.plan_rollup_bounds(pre_aggregation, zone, security_context)
            start_text = await self._bound(data_source, pre_aggregation.build_range_start, dialect, ttl, renew,
                                           request_id, bounds_sql, 0, zone)
            end_text = await self._bound(data_source, pre_aggregation.build_range_end, dialect, ttl, renew,
                                         request_id, bounds_sql, 1, zone)
        else:
            bounds_sql = compiled.planner.plan_rollup_bounds(pre_aggregation, zone, security_context)
            row = await self._cached_row(data_source, bounds_sql, ttl, renew, request_id)
            start_text, end_text = (row[0], row[1]) if row else (None, None)
        if start_text is None or end_text is None:
            return None
        return local_time(str(start_text)), local_time(str(end_text))

    async def _bound(self, data_source: str, sql: str | None, dialect: str, ttl: float, renew: bool,
                     request_id: str, bounds_sql: RenderedSql, index: int, zone: str) -> Any:
        if sql is None:
            row = await self._cached_row(data_source, bounds_sql, ttl, renew, request_id)
            return row[index] if row else None
        rendered = render_sql(sqlglot.parse_one(sql, read=dialect), [], dialect)
        row = await self._cached_row(data_source, rendered, ttl, renew, request_id)
        if not row or row[0] is None:
            return None
        # A build range is an instant (a UTC timestamp, as Cube reads it), partitioned in
        # local time like the time dimension.
        moment = local_time(str(row[0])).replace(tzinfo=dt_timezone.utc)
        return moment.astimezone(zoneinfo.ZoneInfo(zone)).replace(tzinfo=None).isoformat(timespec="milliseconds")

    async def _cached_row(self, data_source: str, sql: RenderedSql, ttl: float, renew: bool,
                          request_id: str) -> tuple[Any, ...] | None:
        cache_key = f"{self.orchestrator_id}:preagg_range:{digest(data_source, sql.text, list(sql.params))}"
        if not renew:
            cached = await self.cache_store.get(cache_key)
            if cached is not None:
                value = json.loads(cached)
                return tuple(value) if value is not None else None
        now = self.clock.seconds()
        period: Any = int(now // ttl)
        if renew:
            period = [period, request_id]
        item = QueuedQuery(key=digest("preagg_range", data_source, sql.text, list(sql.params), period),
                           data_source=data_source, sql=sql.text, params=list(sql.params), added_at=now,
                           request_id=request_id)
        result = await self.cache.queue_for(data_source).execute(item)
        row = tuple(result.rows[0]) if result.rows else None
        await self.cache_store.set(cache_key, json.dumps(row, default=str), ttl)
        return row

    # -- key values and versions ---------------------------------------------------------
    def frozen(self, target: BuildTarget) -> bool:
        """Return whether an incremental partition is past its update window (not rebuilt)."""
        refresh = target.pre_aggregation.refresh
        if not refresh.incremental or target.partition is None:
            return False
        window = refresh.update_window or 0.0
        return self.clock.seconds() >= target.partition.end + window

    async def key_values(self, target: BuildTarget, renew: bool, request_id: str) -> list[Any]:
        """Return the refresh-key values of a target (None for a frozen partition's keys)."""
        if self.frozen(target):
            return [None for _ in target.keys]
        return await self.cache.key_values(list(target.keys), renew, request_id)

    async def versions(self, data_source: str, schema: str, fresh: bool = False) -> list[TableVersion]:
        """Return the pre-aggregation tables in a schema, newest first (listed at most every
        few seconds unless ``fresh``)."""
        key = (data_source, schema)
        now = self.clock.seconds()
        cached = self._tables.get(key)
        if cached is not None and not fresh and now - cached[0] < TABLE_LIST_TTL:
            return cached[1]
        driver = self.drivers[data_source]
        placeholder = exp.Placeholder(this="cubedp0")
        select = exp.select(exp.column("table_name"), copy=False).from_(
            exp.to_table("information_schema.tables"), copy=False).where(
            exp.EQ(this=exp.column("table_schema"), expression=placeholder), copy=False)
        sql = render_sql(select, [schema], driver.dialect)
        result = await driver.execute(sql.text, list(sql.params), name="pre-aggregation tables")
        found = [v for v in (parse_table_name(str(row[0])) for row in result.rows) if v is not None]
        found.sort(key=lambda v: -v.updated_at)
        self._tables[key] = (now, found)
        return found

    def forget_tables(self, data_source: str, schema: str) -> None:
        """Drop the cached table list of a schema (a build or clean-up changed it)."""
        self._tables.pop((data_source, schema), None)

    async def touch(self, physical: str) -> None:
        """Mark a table as read now (clean-up keeps it for TOUCH_WINDOW seconds)."""
        now = self.clock.seconds()
        if now - self._touched.get(physical, float("-inf")) < TOUCH_THROTTLE:
            return
        self._touched[physical] = now
        await self.cache_store.set(f"{self.orchestrator_id}:preagg_touch:{physical}", str(now), TOUCH_WINDOW)

    # -- the request path ----------------------------------------------------------------
    async def tables_for(self, compiled: Any, read: Any, request_id: str,
                         security_context: Mapping[str, Any] | None = None) -> list[tuple[str, str]] | None:
        """Return ``(logical, physical)`` schema-qualified names of the tables a rollup read
        selects from for the request's security context (building what is missing), or None
        when the pre-aggregation has no rows to partition."""
        targets = await self.targets(compiled, read.pre_aggregation, read.timezone, read.date_range,
                                     request_id=request_id, security_context=security_context)
        if not targets:
            return None
        if len(targets) == 1:
            tables = [await self.load(targets[0], request_id)]
        else:
            tables = await gather(ensureDeferred(self.load(t, request_id)) for t in targets)
        return [(target.qualified, f"{target.schema}.{table}") for target, table in zip(targets, tables)]

    def describe(self, compiled: Any, read: Any, security_context: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Return the ``/v1/sql`` ``preAggregations`` entry of a rollup read for a security
        context (Cube's fields; a partitioned rollup is shown with its whole-range load SQL)."""
        pre_aggregation = read.pre_aggregation
        target = self._target(compiled, pre_aggregation, read.timezone, None, security_context)
        model = compiled.model
        columns = [column_name(model, p) for p in pre_aggregation.dimensions]
        time_column = time_column_name(model, pre_aggregation)
        if time_column:
            columns.append(time_column)
        columns += [column_name(model, p) for p in pre_aggregation.segments]
        aggregations = []
        for path in pre_aggregation.measures:
            cube_name, _, name = path.partition(".")
            function = {"min": "min", "max": "max"}.get(model.cubes[cube_name].measures[name].type, "sum")
            aggregations.append(f'{function}("{column_name(model, path)}")')
        select = target.select.render()
        return {
            "preAggregationId": pre_aggregation.id,
            "timezone": read.timezone,
            "timestampFormat": "YYYY-MM-DD[T]HH:mm:ss.SSS[Z]",
            "tableName": target.qualified,
            "invalidateKeyQueries": [key.cache_key_query() for key in target.keys],
            "type": pre_aggregation.type,
            "external": False,
            "previewSql": [f"SELECT * FROM {target.qualified} LIMIT 1000", []],
            "preAggregationsSchema": target.schema,
            "loadSql": [target.create.display, list(target.create.params)],
            "sql": [select.display, list(select.params)],
            "uniqueKeyColumns": [f'"{c}"' for c in columns],
            "aggregationsColumns": aggregations,
            "dataSource": target.data_source,
            "granularity": pre_aggregation.granularity,
            "partitionGranularity": pre_aggregation.partition_granularity,
            "indexesSql": [{"indexName": name, "sql": [index.display, []]}
                           for (name, _columns), index in zip(target.index_columns, target.indexes)],
            "createTableIndexes": [],
            "readOnly": False,
        }

    async def load(self, target: BuildTarget, request_id: str = "", renew: bool = False) -> str:
        """Return the physical table answering ``target`` now (see the module docstring)."""
        values = await self.key_values(target, renew, request_id)
        content = target.content(values)
        tables = [v for v in await self.versions(target.data_source, target.schema) if v.logical == target.logical]
        exact = next((v for v in tables if v.content == content and v.structure == target.structure), None)
        if exact is not None:
            await self.touch(exact.physical)
            return exact.physical
        same_structure = next((v for v in tables if v.structure == target.structure), None)
        if self.rollup_only:
            if same_structure is not None:
                await self.touch(same_structure.physical)
                return same_structure.physical
            raise UserError(ROLLUP_ONLY_ERROR)
        queue = self.queue(target.data_source)
        if same_structure is not None:
            # Nobody waits for this rebuild (the older table answers meanwhile), so nobody would
            # renew it: it gets a refresh pass's orphan timeout, not a request's.
            timeout = max(REFRESH_ORPHANED_TIMEOUT, queue.options.orphaned_timeout)
            item = self.build_item(target, content, values, REQUEST_PRIORITY, request_id, timeout)
            background = ensureDeferred(queue.execute(item, wait=0))
            background.addErrback(lambda f: None if f.check(ContinueWait) else self.log.warn(
                "rebuild of {table} failed: {error}", table=target.qualified, error=f.getErrorMessage()))
            await self.touch(same_structure.physical)
            return same_structure.physical
        item = self.build_item(target, content, values, REQUEST_PRIORITY, request_id)
        result = await queue.execute(item)
        physical = str(result.rows[0][0])
        await self.touch(physical)
        return physical

    def build_item(self, target: BuildTarget, content: str, values: list[Any], priority: int,
                   request_id: str, orphaned_timeout: float | None = None) -> QueuedQuery:
        """Return the queue item building ``target`` at a content version (one per version,
        whoever asks), dropped when nobody asks for it within ``orphaned_timeout`` seconds
        (None: the queue's)."""
        now = self.clock.seconds()
        physical = physical_name(target.logical, content, target.structure, now)
        dialect = self.drivers[target.data_source].dialect
        statements = [self._create_schema(target.schema, dialect)]
        statements.append(target.select.render(lambda tree: create_table(target.schema, physical, tree)))
        # Index names live in the schema: each version's get the version's digest.
        statements += [render_sql(create_index(target.schema, physical, f"{name}_{version([physical, name])}", columns),
                                  [], dialect)
                       for name, columns in target.index_columns]
        job = {"kind": "build", "schema": target.schema, "logical": target.logical, "table": physical,
               "statements": [[s.text, list(s.params)] for s in statements]}
        return QueuedQuery(key=digest("build", target.data_source, target.qualified, content), data_source=target.data_source,
                           sql=statements[1].text, params=list(statements[1].params), priority=priority,
                           added_at=now, request_id=request_id, job=job, orphaned_timeout=orphaned_timeout)

    @staticmethod
    def _create_schema(schema: str, dialect: str) -> RenderedSql:
        return render_sql(exp.Create(this=exp.Table(this=exp.to_identifier(schema)), kind="SCHEMA", exists=True),
                          [], dialect)

    # -- the queue's executor ------------------------------------------------------------
    def _executor(self, data_source: str, driver: Driver) -> Callable[[QueuedQuery], Deferred[ResultSet]]:
        def run(item: QueuedQuery) -> Deferred[ResultSet]:
            if item.job is None:
                return driver.execute(item.sql, item.params, name=f"query {item.key[:12]}")
            if item.job.get("kind") == "drop":
                return ensureDeferred(self._drop_superseded(data_source, driver, item.job))
            return ensureDeferred(self._build(data_source, driver, item.job))

        return run

    async def _build(self, data_source: str, driver: Driver, job: Mapping[str, Any]) -> ResultSet:
        table = f"{job['schema']}.{job['table']}"
        started = self.clock.seconds()
        self.log.info("building pre-aggregation table {table}", table=table)
        create_schema, *statements = job["statements"]
        try:
            await self._ensure_schema(driver, job["schema"], create_schema)
            for text, params in statements:
                await driver.execute(text, params, name=f"build {job['table']}")
        except CancelledError:
            raise
        except Exception:
            self.metrics.pre_aggregation_build(self.orchestrator_id, data_source, self.clock.seconds() - started, True)
            raise
        self.builds += 1
        self.metrics.pre_aggregation_build(self.orchestrator_id, data_source, self.clock.seconds() - started, False)
        self.forget_tables(data_source, job["schema"])
        self.log.info("built pre-aggregation table {table} in {seconds:.3f} s", table=table,
                      seconds=self.clock.seconds() - started)
        drop = QueuedQuery(key=digest("drop", data_source, job["schema"], job["logical"], job["table"]),
                           data_source=data_source, sql="", params=[], priority=-1,
                           added_at=self.clock.seconds(),
                           job={"kind": "drop", "schema": job["schema"], "logical": job["logical"], "keep": job["table"]})
        cleanup = ensureDeferred(self.queue(data_source).execute(drop, wait=0))
        cleanup.addErrback(lambda f: None if f.check(ContinueWait) else self.log.warn(
            "clean-up after {table} failed: {error}", table=table, error=f.getErrorMessage()))
        return ResultSet((Column("table", "string"),), [(job["table"],)])

    async def _ensure_schema(self, driver: Driver, schema: str, create: list[Any]) -> None:
        # Two first builds may create the schema at once: PostgreSQL then fails one CREATE
        # SCHEMA IF NOT EXISTS on its catalog's unique index. The schema existing is success.
        try:
            await driver.execute(create[0], create[1], name=f"create schema {schema}")
        except DatabaseError:
            placeholder = exp.Placeholder(this="cubedp0")
            select = exp.select(exp.Literal.number(1), copy=False).from_(
                exp.to_table("information_schema.schemata"), copy=False).where(
                exp.EQ(this=exp.column("schema_name"), expression=placeholder), copy=False)
            check = render_sql(select, [schema], driver.dialect)
            found = await driver.execute(check.text, list(check.params), name=f"schema {schema}")
            if not found.rows:
                raise

    async def _drop_superseded(self, data_source: str, driver: Driver, job: Mapping[str, Any]) -> ResultSet:
        schema, logical = job["schema"], job["logical"]
        tables = [v for v in await self.versions(data_source, schema, fresh=True) if v.logical == logical]
        now = self.clock.seconds()
        newest_by_structure: dict[str, TableVersion] = {}
        for table in tables:  # newest first
            newest_by_structure.setdefault(table.structure, table)
        dropped = []
        for table in tables:
            newest = newest_by_structure[table.structure]
            if table.physical == job.get("keep"):
                continue
            if table is newest and now - table.updated_at < STRUCTURE_PERSIST:
                continue
            if await self.cache_store.get(f"{self.orchestrator_id}:preagg_touch:{table.physical}") is not None:
                continue
            statement = render_sql(exp.Drop(tables=[_qualified_table(schema, table.physical)], kind="TABLE",
                                            exists=True), [], driver.dialect)
            await driver.execute(statement.text, [], name=f"drop {table.physical}")
            dropped.append(table.physical)
        if dropped:
            self.forget_tables(data_source, schema)
            self.log.info("dropped superseded pre-aggregation tables {tables}", tables=", ".join(dropped))
        return ResultSet((Column("dropped", "number"),), [(len(dropped),)])

    # -- the refresh pass ----------------------------------------------------------------
    async def refresh_target(self, target: BuildTarget, priority: int, request_id: str,
                             orphaned_timeout: float | None = None) -> TargetState:
        """Queue a build of ``target`` unless its current content is built (dropped when no
        pass asks for it again within ``orphaned_timeout``); return its state."""
        try:
            values = await self.key_values(target, True, request_id)
            content = target.content(values)
            tables = [v for v in await self.versions(target.data_source, target.schema)
                      if v.logical == target.logical]
            if any(v.content == content and v.structure == target.structure for v in tables):
                return TargetState(target, "done")
            item = self.build_item(target, content, values, priority, request_id, orphaned_timeout)
            queue = self.queue(target.data_source)
            try:
                await queue.execute(item, wait=0)
            except ContinueWait as waiting:
                running = bool(waiting.stage and waiting.stage.get("stage") == "Executing query")
                return TargetState(target, "running" if running else "queued")
            return TargetState(target, "done")
        except ContinueWait:
            return TargetState(target, "queued")
        except CubedError as error:
            return TargetState(target, "failed", error.message)


def context_key(compiled: Any, security_context: Mapping[str, Any] | None) -> str | None:
    """Return what tells security contexts apart for a model's targets (None when its SQL
    reads no ``SECURITY_CONTEXT``: every context builds the same tables)."""
    if hasattr(compiled, "context_key"):
        return compiled.context_key(security_context)
    return json.dumps(security_context or {}, sort_keys=True, default=str)
