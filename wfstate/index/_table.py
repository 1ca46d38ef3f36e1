"""The index table as a sync reads and writes it: set-based, raw SQL per database."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db import connections, models, router, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from wfstate.index.projection import ROW_FIELDS
from wfstate.models import WorkflowRun

# The page cache of a sync's SQLite connection, in KiB (see Table.large_cache).
SYNC_CACHE_KIB = 64 * 1024

# "CREATE INDEX" or "CREATE UNIQUE INDEX" at the start of a statement (see _create_indexes).
_IF_NOT_EXISTS = re.compile(
    r"^(?P<create>CREATE\s+(?:UNIQUE\s+)?INDEX)\s+(?!IF\s+NOT\s+EXISTS)", re.IGNORECASE
)

logger = logging.getLogger("wfstate.index")

# A row's values in ``ROW_FIELDS`` order, in the form the table returns them.
Values = tuple[Any, ...]


def chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def comparable(fields: dict[str, Any], text_times: bool, tz: dt.tzinfo) -> Values:
    """A row's values in ``ROW_FIELDS`` order, as the index table returns them.

    With ``text_times`` (SQLite) a datetime is the text Django's SQLite backend stores
    for it (``adapt_datetimefield_value``: naive, in the connection's time zone ``tz``
    for an aware one; a naive one, as the projection gives without ``USE_TZ``, as is).
    """
    values = [fields[name] for name in ROW_FIELDS]
    if text_times:
        naive = not settings.USE_TZ  # then the projection's times are naive already
        for i in DATETIME_AT:
            value = values[i]
            if value is None:
                continue
            if not naive:
                value = value.astimezone(tz).replace(tzinfo=None)
            values[i] = str(value)
    return tuple(values)


DATETIME_AT = tuple(
    i for i, name in enumerate(ROW_FIELDS) if name in ("started_at", "updated_at", "completed_at")
)


class Table:
    """Raw, set-based reads and writes of the index table for ``sync``.

    The ORM's ``bulk_create`` spends most of its time preparing values field by field;
    here a batch is a few ``SELECT ... IN`` and one ``executemany`` upsert (``INSERT ...
    ON CONFLICT (workflow_id) DO UPDATE``, which SQLite and PostgreSQL share). Other
    backends take the ORM's ``bulk_create(update_conflicts=True)``.

    Rows are compared in the form the database returns them: on SQLite the datetime
    columns are read as their stored text (``CAST(... AS TEXT)``, nothing parsed) and
    the file's values are put in that same text form, which is also what is written.
    """

    def __init__(self) -> None:
        self.connection = connections[router.db_for_write(WorkflowRun)]
        vendor = self.connection.vendor
        self.fast = vendor in ("sqlite", "postgresql")
        # SQLite keeps datetimes as text: compare and write that text directly.
        self.text_times = vendor == "sqlite"
        # With USE_TZ the projection's times are aware and the database's are made aware
        # in the connection's zone; without, both are naive in TIME_ZONE (where Django
        # keeps them then), so a row written by one sync is equal at the next.
        self.use_tz = bool(settings.USE_TZ)
        self.tz: dt.tzinfo = (
            (self.connection.timezone or dt.UTC) if self.use_tz else timezone.get_default_timezone()
        )
        self.lookup = min(self.connection.features.max_query_params or 5000, 5000) - 99
        meta = WorkflowRun._meta
        quote = self.connection.ops.quote_name
        self.table = quote(meta.db_table)
        self.key = quote(self._column("workflow_id"))
        self.columns = [quote(self._column(name)) for name in ROW_FIELDS]
        self.indexed_at = quote(self._column("indexed_at"))
        self.corrupt_at = ROW_FIELDS.index("corrupt")
        self.started_at = ROW_FIELDS.index("started_at")

    @contextlib.contextmanager
    def large_cache(self) -> Iterator[None]:
        """A larger page cache on SQLite for the duration (a sync's), then the
        connection's own again.

        A sync's write batch touches pages all over the table's indexes (its rows'
        times, names and statuses are anywhere in them): with SQLite's default cache of
        2 MB, pages modified by the batch are spilled to the file before the commit,
        each spill behind a sync of the journal. The cache only grows as pages are
        read, up to the size of the database at most.
        """
        if self.connection.vendor != "sqlite":
            yield
            return
        with self.connection.cursor() as cursor:
            cursor.execute("PRAGMA cache_size")  # pages, or KiB if negative
            (before,) = cursor.fetchone()
            cursor.execute("PRAGMA page_size")
            (page_size,) = cursor.fetchone()
            kib = -before if before < 0 else before * page_size // 1024
            if kib < SYNC_CACHE_KIB:
                cursor.execute(f"PRAGMA cache_size = -{SYNC_CACHE_KIB}")
            else:
                before = None  # large enough already
        try:
            yield
        finally:
            if before is not None and self.connection.connection is not None:
                with self.connection.cursor() as cursor:
                    cursor.execute(f"PRAGMA cache_size = {int(before)}")

    # --- the listing indexes, for a bulk load (SQLite) -----------------------------------

    @contextlib.contextmanager
    def bulk_load(self, many: bool) -> Iterator[None]:
        """Rows written inside go into a table without its listing indexes (SQLite, and
        only when ``many`` rows go into an empty table), which are made again at the
        end from the SQL they had, also when the block fails or is interrupted.

        Rows go into a table without them two to three times faster, and an index made
        over the rows at the end costs a fraction of keeping it up to date row by row
        (measured in docs/performance.md). Never the unique index of run ids (the
        upsert needs it). Should the process die before they are made again, the next
        sync makes them (:meth:`restore_listing_indexes`).
        """
        if not (many and self.connection.vendor == "sqlite" and self._is_empty()):
            yield
            return
        with transaction.atomic(using=self.connection.alias):
            found = self._index_sql()
            with self.connection.cursor() as cursor:
                for name in found:
                    cursor.execute(f"DROP INDEX {self.connection.ops.quote_name(name)}")
        if found:
            logger.info("sync: building the listing indexes after the rows (%s)", ", ".join(found))
        try:
            yield
        except BaseException:
            try:
                self._create_indexes(list(found.values()))
            except Exception:
                logger.exception("sync: listing indexes not made again; the next sync will")
            raise
        self._create_indexes(list(found.values()))

    def _is_empty(self) -> bool:
        with self.connection.cursor() as cursor:
            cursor.execute(f"SELECT 1 FROM {self.table} LIMIT 1")  # noqa: S608 - quoted name
            return cursor.fetchone() is None

    def _index_sql(self) -> dict[str, str]:
        """The model's listing indexes that the table has now, by name: their SQL as
        SQLite keeps it (the text that made them)."""
        wanted = {index.name for index in WorkflowRun._meta.indexes}
        with self.connection.cursor() as cursor:
            cursor.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = %s",
                [WorkflowRun._meta.db_table],
            )
            return {name: sql for name, sql in cursor.fetchall() if name in wanted and sql}

    def _create_indexes(self, statements: list[str]) -> None:
        """Make indexes from their CREATE statements, in one transaction; one made
        meanwhile by somebody else (a sync restoring it) is left as it is."""
        if not statements:
            return
        with transaction.atomic(using=self.connection.alias), self.connection.cursor() as cursor:
            for sql in statements:
                cursor.execute(_IF_NOT_EXISTS.sub(r"\g<create> IF NOT EXISTS ", sql, count=1))

    def restore_listing_indexes(self) -> list[str]:
        """Make the model's listing indexes the table lacks, when wfstate's migrations
        are all applied (so they should exist): what a sync killed during a bulk load
        left out. Returns their names. A look at ``sqlite_master`` when none is missing.
        """
        if self.connection.vendor != "sqlite":
            return []
        present = self._index_sql()
        missing = [index for index in WorkflowRun._meta.indexes if index.name not in present]
        if not missing or not self._migrated():
            return []
        editor = self.connection.schema_editor()  # only builds the SQL (never entered)
        self._create_indexes([str(index.create_sql(WorkflowRun, editor)) for index in missing])
        names = [str(index.name) for index in missing]
        logger.warning("sync: made the listing indexes a killed sync left out: %s", names)
        return names

    def _migrated(self) -> bool:
        """Whether every migration of wfstate (and what it depends on) is applied."""
        from django.db.migrations.executor import MigrationExecutor

        executor = MigrationExecutor(self.connection)
        leaves = [key for key in executor.loader.graph.leaf_nodes() if key[0] == "wfstate"]
        return not executor.migration_plan(leaves)

    @staticmethod
    def _column(name: str) -> str:
        field = WorkflowRun._meta.get_field(name)
        assert isinstance(field, models.Field)
        return str(field.column)

    def comparable(self, fields: dict[str, Any]) -> Values:
        """The row's values as :meth:`existing` returns them."""
        return comparable(fields, self.text_times, self.tz)

    def existing(
        self,
        ids: list[str],
        *,
        after: str | None = None,
        last: bool = False,
        unlisted: list[str] | None = None,
    ) -> dict[str, Values]:
        """The rows of ``ids`` that exist, as comparable to :meth:`comparable` values.

        On SQLite the rows read are one range of ids: from just after ``after`` (from
        the first row if None) to the greatest of ``ids`` (to the last row with
        ``last``). With ``unlisted`` (SQLite only), the ids of the rows read that are
        not in ``ids`` are appended to it: batches read each from the last id of the
        one before cover every row once (see ``bulk``).
        """
        columns = [
            f"CAST({c} AS TEXT)" if self.text_times and i in DATETIME_AT else c
            for i, c in enumerate(self.columns)
        ]
        select = f"SELECT {self.key}, {', '.join(columns)} FROM {self.table}"  # noqa: S608 - quoted names, bound values
        fetched: list[Any] = []
        with self.connection.cursor() as cursor:
            if self.text_times and ids:
                # SQLite compares text as bytes, the order of Python's str: the rows of a
                # sorted batch (a sync's, from store.list()) are one range of the unique
                # index, read in one scan instead of a probe per id (which costs as much
                # as the scan when the table is empty, and more when it is full). Rows
                # between them that have no file are returned too: left unused, or
                # handed back in ``unlisted``.
                bounds = [] if after is None else [(">", after)]
                if not last:
                    bounds.append(("<=", max(ids)))
                where = " AND ".join(f"{self.key} {op} %s" for op, _ in bounds)
                params = [value for _, value in bounds]
                cursor.execute(f"{select} WHERE {where}" if where else select, params)
                wanted = set(ids)
                for raw in cursor.fetchall():
                    if raw[0] in wanted:
                        fetched.append(raw)
                    elif unlisted is not None:
                        unlisted.append(raw[0])
            else:
                if unlisted is not None:
                    raise ValueError("unlisted rows come with SQLite's range reads only")
                for part in chunks(ids, self.lookup):
                    where = f"{self.key} IN ({', '.join(['%s'] * len(part))})"
                    cursor.execute(f"{select} WHERE {where}", part)
                    fetched.extend(cursor.fetchall())
        if self.text_times:
            return {raw[0]: (*raw[1:-1], bool(raw[-1])) for raw in fetched}
        tz = self.tz
        rows = {}
        for raw in fetched:
            values = list(raw[1:])
            for i in DATETIME_AT:
                value = values[i]
                if isinstance(value, str):  # a driver without converters
                    value = parse_datetime(value)
                if value is None:
                    pass
                elif self.use_tz and timezone.is_naive(value):
                    value = timezone.make_aware(value, tz)
                elif not self.use_tz and timezone.is_aware(value):
                    value = timezone.make_naive(value, tz)
                values[i] = value
            values[self.corrupt_at] = bool(values[self.corrupt_at])
            rows[raw[0]] = tuple(values)
        return rows

    def run_ids(self) -> Iterator[str]:
        """Every row's run id."""
        with self.connection.cursor() as cursor:
            cursor.execute(f"SELECT {self.key} FROM {self.table}")  # noqa: S608 - quoted names
            while batch := cursor.fetchmany(10_000):
                for (workflow_id,) in batch:
                    yield workflow_id

    def upsert(self, rows: list[tuple[str, Values]]) -> None:
        """Insert or overwrite rows (values as :meth:`comparable` gives them)."""
        if not rows:
            return
        # In start order: the listing indexes (started_at, and status or name with it)
        # then grow at a few places instead of at random ones, which is faster.
        at = self.started_at
        rows = sorted(rows, key=lambda row: (row[1][at] is not None, row[1][at] or 0))
        now = timezone.now()
        if not self.fast:
            objs = [
                WorkflowRun(
                    workflow_id=wid, indexed_at=now, **dict(zip(ROW_FIELDS, values, strict=True))
                )
                for wid, values in rows
            ]
            WorkflowRun.objects.bulk_create(
                objs,
                update_conflicts=True,
                unique_fields=["workflow_id"],
                update_fields=[*ROW_FIELDS, "indexed_at"],
            )
            return
        columns = [self.key, *self.columns, self.indexed_at]
        updates = ", ".join(f"{c} = excluded.{c}" for c in [*self.columns, self.indexed_at])
        sql = (
            f"INSERT INTO {self.table} ({', '.join(columns)}) "  # noqa: S608 - quoted names
            f"VALUES ({', '.join(['%s'] * len(columns))}) "
            f"ON CONFLICT ({self.key}) DO UPDATE SET {updates}"
        )
        stamp = self.connection.ops.adapt_datetimefield_value(now)
        if self.text_times:
            params = [(wid, *values, stamp) for wid, values in rows]
        else:
            adapt = self.connection.ops.adapt_datetimefield_value
            params = [
                (wid, *(adapt(v) if i in DATETIME_AT else v for i, v in enumerate(values)), stamp)
                for wid, values in rows
            ]
        with self.connection.cursor() as cursor:
            cursor.executemany(sql, params)
