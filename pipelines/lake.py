"""The lake: one parquet file per table and day (``<table>/ds=YYYY-MM-DD/data.parquet``), local or on S3.

Every write goes to a temporary object first and is published by a rename (local) or lands as one object PUT
(S3), so a reader never sees half a partition and a rerun replaces a day instead of appending to it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.data.landed import day_timezone
from pipelines.settings import Settings

PARTITION_FILE = "data.parquet"
# Append-only tables (the prediction log) hold many parts per day instead of one replaced file.
PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"


class PartitionNotFound(FileNotFoundError):
    """A table has no partition for the requested day."""


class LakeWriteError(OSError):
    """A partition or part could not be written (disk full, read-only directory, S3 down): nothing was published."""


def as_date(value: str | dt.date | dt.datetime) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError as exc:
        raise ValueError(f"not a date: {value!r} (expected YYYY-MM-DD)") from exc


def date_range(start: str | dt.date, end: str | dt.date) -> list[dt.date]:
    """Inclusive list of days from ``start`` to ``end``."""
    first, last = as_date(start), as_date(end)
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


@dataclass
class Lake:
    """Partitioned parquet storage rooted at ``settings.lake_uri`` (a directory or ``s3://bucket/prefix``)."""

    settings: Settings

    def __post_init__(self) -> None:
        uri = self.settings.lake_uri
        if self.settings.lake_is_s3:
            opts = self.settings.storage_options
            self.fs: pafs.FileSystem = pafs.S3FileSystem(
                access_key=opts.get("key"),
                secret_key=opts.get("secret"),
                endpoint_override=opts.get("endpoint_url"),
                region=opts.get("region", "us-east-1"),
                allow_bucket_creation=False,
            )
            self.root = uri.removeprefix("s3://").rstrip("/")
        else:
            self.fs = pafs.LocalFileSystem()
            self.root = uri.rstrip("/")
            self.fs.create_dir(self.root, recursive=True)

    @cached_property
    def day_zone(self) -> str:
        """The IANA zone the lake's days are cut in (``ingest/span.json``; "UTC" when nothing says otherwise).
        Read once per Lake: day bounds are asked for in loops."""
        return day_timezone(self)

    # -- paths -------------------------------------------------------------------------------------------
    def uri(self, *parts: str) -> str:
        """A full URI (``s3://...`` or absolute path) for a path inside the lake, for readers like Feast."""
        path = "/".join([self.root, *parts])
        return f"s3://{path}" if self.settings.lake_is_s3 else path

    def _dir(self, table: str, ds: dt.date | str) -> str:
        return f"{self.root}/{table}/ds={as_date(ds).isoformat()}"

    def _file(self, table: str, ds: dt.date | str) -> str:
        return f"{self._dir(table, ds)}/{PARTITION_FILE}"

    def partition_uri(self, table: str, ds: dt.date | str) -> str:
        return self.uri(table, f"ds={as_date(ds).isoformat()}", PARTITION_FILE)

    # -- reads -------------------------------------------------------------------------------------------
    def exists(self, table: str, ds: dt.date | str) -> bool:
        return self.fs.get_file_info(self._file(table, ds)).type == pafs.FileType.File

    def partitions(self, table: str) -> list[dt.date]:
        """Days that have a published partition, sorted."""
        selector = pafs.FileSelector(f"{self.root}/{table}", allow_not_found=True)
        days = []
        for info in self.fs.get_file_info(selector):
            name = info.base_name
            published = self.fs.get_file_info(f"{info.path}/{PARTITION_FILE}").type == pafs.FileType.File
            if info.type == pafs.FileType.Directory and name.startswith("ds=") and published:
                days.append(as_date(name[3:]))
        return sorted(days)

    def read(self, table: str, ds: dt.date | str, columns: list[str] | None = None) -> pd.DataFrame:
        path = self._file(table, ds)
        if not self.exists(table, ds):
            raise PartitionNotFound(f"{self.uri(table)}: no partition for ds={as_date(ds)}")
        return pq.read_table(path, filesystem=self.fs, columns=columns).to_pandas()

    def row_count(self, table: str, ds: dt.date | str) -> int:
        """Rows of a published partition, from its parquet footer (no data read)."""
        if not self.exists(table, ds):
            raise PartitionNotFound(f"{self.uri(table)}: no partition for ds={as_date(ds)}")
        return pq.read_metadata(self._file(table, ds), filesystem=self.fs).num_rows

    def read_range(
        self, table: str, start: dt.date | str, end: dt.date | str, columns: list[str] | None = None
    ) -> pd.DataFrame:
        """Concatenate the partitions of ``[start, end]`` that exist (missing days are simply absent)."""
        frames = [self.read(table, d, columns) for d in date_range(start, end) if self.exists(table, d)]
        if not frames:
            return pd.DataFrame(columns=columns) if columns else pd.DataFrame()
        return pd.concat(frames, ignore_index=True)

    # -- append-only tables (many parts per day) -------------------------------------------------------------
    def part_files(self, table: str, ds: dt.date | str) -> list[str]:
        """Paths of the parts of day ``ds`` of an append-only table, sorted by name (temp files excluded)."""
        selector = pafs.FileSelector(self._dir(table, ds), allow_not_found=True)
        return sorted(
            info.path
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File
            and info.base_name.startswith(PART_PREFIX)
            and info.base_name.endswith(PART_SUFFIX)
        )

    def part_days(self, table: str) -> list[dt.date]:
        """Days of an append-only table that hold at least one part, sorted."""
        selector = pafs.FileSelector(f"{self.root}/{table}", allow_not_found=True)
        days = []
        for info in self.fs.get_file_info(selector):
            if info.type == pafs.FileType.Directory and info.base_name.startswith("ds="):
                day = as_date(info.base_name[3:])
                if self.part_files(table, day):
                    days.append(day)
        return sorted(days)

    def append_part(
        self,
        table: str,
        ds: dt.date | str,
        df: pd.DataFrame | pa.Table,
        name: str | None = None,
        schema: pa.Schema | None = None,
    ) -> str:
        """Add ``df`` as one more part of day ``ds`` of an append-only table (``<table>/ds=.../part-*.parquet``).

        Atomic like :meth:`write` (temp file + rename locally, one PUT on S3), so a reader sees a whole part or
        none. ``name`` (``part-...parquet``) must be unique within the day; by default a random one is made.
        ``schema`` applies to a DataFrame (an Arrow table is written as it is).
        """
        name = name or f"{PART_PREFIX}{uuid.uuid4().hex}{PART_SUFFIX}"
        if "/" in name or not (name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX)):
            raise ValueError(f"part name {name!r}: expected '{PART_PREFIX}<id>{PART_SUFFIX}' without '/'")
        arrow = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, schema=schema, preserve_index=False)
        self._publish(arrow, self._dir(table, ds), name)
        return self.uri(table, f"ds={as_date(ds).isoformat()}", name)

    def read_parts(self, table: str, ds: dt.date | str, max_rows: int | None = None, seed: int = 0) -> pd.DataFrame:
        """The parts of day ``ds`` of an append-only table, concatenated in part-name order. Parts written with
        different columns are aligned (a column a part lacks reads as missing).

        ``max_rows``: read whole parts in a seeded random order only until at least that many rows are read (a
        sample spread over the day's flushes, for days too large to hold); ``attrs["parts_read"]`` says how many."""
        files = self.part_files(table, ds)
        if not files:
            raise PartitionNotFound(f"{self.uri(table)}: no parts for ds={as_date(ds)}")
        if max_rows is not None:
            chosen, rows = [], 0
            for index in np.random.default_rng(seed).permutation(len(files)):
                if rows >= max_rows:
                    break
                chosen.append(files[index])
                rows += pq.read_metadata(files[index], filesystem=self.fs).num_rows
            files = sorted(chosen)
        frames = [pq.read_table(path, filesystem=self.fs).to_pandas() for path in files]
        out = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        out.attrs["parts_read"] = len(files)
        return out

    # -- writes ------------------------------------------------------------------------------------------
    def write(self, table: str, ds: dt.date | str, df: pd.DataFrame, schema: pa.Schema | None = None) -> str:
        """Publish ``df`` as the partition of ``ds``, replacing any previous one atomically."""
        arrow = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
        self._publish(arrow, self._dir(table, ds), PARTITION_FILE)
        return self.partition_uri(table, ds)

    def _publish(self, arrow: pa.Table, directory: str, name: str) -> None:
        """Write ``arrow`` as ``directory/name`` all at once: one PUT on S3 (readers see the old object or the new
        one), else a hidden temp file renamed over it (rename(2) is atomic on one filesystem). A failed write leaves
        the previous file as it was and raises ``LakeWriteError`` naming the file: pyarrow's own error does not."""
        final = f"{directory}/{name}"
        tmp = f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"  # hidden: never read as a partition or a part
        try:
            if self.settings.lake_is_s3:
                pq.write_table(arrow, final, filesystem=self.fs)
                return
            self.fs.create_dir(directory, recursive=True)
            pq.write_table(arrow, tmp, filesystem=self.fs)
            self.fs.move(tmp, final)
        except BaseException as exc:
            if not self.settings.lake_is_s3:
                with contextlib.suppress(OSError):  # best effort: a hidden temp file is never read anyway
                    self.fs.delete_file(tmp)
            if not isinstance(exc, OSError):
                raise
            where = f"s3://{final}" if self.settings.lake_is_s3 else final
            raise LakeWriteError(
                f"{where}: not written ({exc}); nothing was published and the previous version, if any, is unchanged: "
                "free space, fix the directory's permissions or bring the store back, then rerun the step"
            ) from exc

    def write_json(self, key: str, payload: dict) -> str:
        """Write a small JSON document (reports, markers) atomically at ``key`` inside the lake."""
        data = json.dumps(payload, indent=2, default=str).encode()
        final = f"{self.root}/{key}"
        parent = final.rsplit("/", 1)[0]
        if not self.settings.lake_is_s3:
            self.fs.create_dir(parent, recursive=True)
            tmp = f"{parent}/.{uuid.uuid4().hex}.tmp"
            with self.fs.open_output_stream(tmp) as out:
                out.write(data)
            self.fs.move(tmp, final)
        else:
            with self.fs.open_output_stream(final) as out:
                out.write(data)
        return self.uri(key)

    def read_json(self, key: str) -> dict | None:
        path = f"{self.root}/{key}"
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as src:
            return json.loads(src.read())

    def delete(self, table: str, days: Iterable[dt.date | str]) -> None:
        for d in days:
            if self.exists(table, d):
                self.fs.delete_dir(self._dir(table, d))

    def quarantine(self, table: str, ds: dt.date | str, report: dict) -> str:
        """Move a published partition to ``quarantine/<table>/ds=...`` with the report that condemned it."""
        day = as_date(ds).isoformat()
        target_dir = f"{self.root}/quarantine/{table}/ds={day}"
        if self.exists(table, ds):
            self.fs.create_dir(target_dir, recursive=True)
            self.fs.move(self._file(table, ds), f"{target_dir}/{PARTITION_FILE}")
            self.fs.delete_dir(self._dir(table, ds))
        self.write_json(f"quarantine/{table}/ds={day}/report.json", report)
        return self.uri("quarantine", table, f"ds={day}")

    def is_quarantined(self, table: str, ds: dt.date | str) -> bool:
        path = f"{self.root}/quarantine/{table}/ds={as_date(ds).isoformat()}/{PARTITION_FILE}"
        return self.fs.get_file_info(path).type == pafs.FileType.File
