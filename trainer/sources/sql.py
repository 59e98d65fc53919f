"""SQL databases as a DataExtractionAnalysis source: ``--db sqlite:///fleet.db`` or ``postgresql+psycopg://…``.

One table holds the samples, one row per sample: ``robot``, the timestamp column
(``trainer.timestamp_field``, epoch seconds), one column per mapped channel (the
file column names of the channel mapping, as a controller's export names them),
and optionally the ground truth columns ``mode, component, health, failure, rul_s``.
Rows with NULL, non-numeric or non-finite values are quarantined with the reason
and their location (table, robot, timestamp). An unreachable database, a missing
table or column is a clear error naming the URL (password hidden), table or column.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.contract.records import RecordSchema
from trainer.config import TrainerConfig
from trainer.errors import DataError, SourceError
from trainer.stages.extraction import DataExtractionAnalysis, Dataset, RobotSeries, split_by_robot
from trainer.stages.truth import QuarantinedRow, Truth

ROBOT_COLUMN = "robot"
_TRUTH_OPTIONAL = ("mode", "component", "health", "failure", "rul_s")
_FETCH = 50_000


def _engine(url: str) -> Any:
    import sqlalchemy

    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]  # psycopg 3, the driver we install

    try:
        engine = sqlalchemy.create_engine(url)
    except (sqlalchemy.exc.ArgumentError, ImportError, ValueError) as exc:
        raise SourceError(f"{_safe(url)}: not a usable database URL: {exc}") from None
    return engine


def _safe(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a URL too broken to parse is shown without its user info
        return url.split("@")[-1]


def read_sql_dataset(url: str, table: str, schema: RecordSchema) -> Dataset:
    """All samples of `table`, per robot in time order, with truth when the table has it."""
    import sqlalchemy

    engine = _engine(url)
    try:
        with engine.connect() as connection:
            inspector = sqlalchemy.inspect(connection)
            if not inspector.has_table(table):
                raise DataError(
                    f"{_safe(url)}: no table {table!r}; it has {sorted(inspector.get_table_names())}"
                )
            present = {c["name"] for c in inspector.get_columns(table)}
            required = [ROBOT_COLUMN, schema.timestamp_field, *schema.channels]
            missing = [c for c in required if c not in present]
            if missing:
                raise DataError(f"{_safe(url)}: table {table!r} lacks column(s) {missing}")
            truth_columns = [c for c in _TRUTH_OPTIONAL if c in present]
            columns = [*required, *truth_columns]
            quoted = ", ".join(connection.dialect.identifier_preparer.quote(c) for c in columns)
            name = connection.dialect.identifier_preparer.quote(table)
            order = ", ".join(
                connection.dialect.identifier_preparer.quote(c)
                for c in (ROBOT_COLUMN, schema.timestamp_field)
            )
            result = connection.execution_options(stream_results=True).execute(
                sqlalchemy.text(f"SELECT {quoted} FROM {name} ORDER BY {order}")
            )
            rows: list[Sequence[Any]] = []
            while batch := result.fetchmany(_FETCH):
                rows.extend(batch)
    except sqlalchemy.exc.OperationalError as exc:
        raise SourceError(f"{_safe(url)}: cannot reach the database: {exc.orig}") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise SourceError(f"{_safe(url)}: {exc.__class__.__name__}: {exc}") from None
    finally:
        engine.dispose()
    return _to_dataset(rows, table, schema, truth_columns, f"{_safe(url)}#{table}")


def _to_dataset(
    rows: list[Sequence[Any]], table: str, schema: RecordSchema, truth_columns: list[str], source: str
) -> Dataset:
    if not rows:
        raise DataError(f"{source}: table {table!r} is empty")
    n_numeric = 1 + len(schema.channels)
    digest = hashlib.sha256()
    quarantine: list[QuarantinedRow] = []
    per_robot: dict[str, list[tuple[Any, ...]]] = {}
    for number, row in enumerate(rows, start=1):
        robot = str(row[0])
        numbers: list[float] = []
        reason = ""
        for value in row[1 : 1 + n_numeric]:
            if value is None:
                reason = "null"
                break
            try:
                number_value = float(value)
            except (TypeError, ValueError):
                reason = "not_numeric"
                break
            if not math.isfinite(number_value):
                reason = "not_finite"
                break
            numbers.append(number_value)
        if reason:
            quarantine.append(QuarantinedRow(source, number, 0, reason, f"robot={robot} row={list(row)[:4]}"))
            continue
        digest.update(repr(tuple(row)).encode())
        per_robot.setdefault(robot, []).append((numbers, row[1 + n_numeric :]))
    series: list[RobotSeries] = []
    for robot, items in per_robot.items():
        table_values = np.array([numbers for numbers, _ in items], dtype=np.float64)
        truth = None
        if "mode" in truth_columns:
            extra = {name: [t[truth_columns.index(name)] for _, t in items] for name in truth_columns}
            truth = Truth(
                mode=np.array([str(m or "healthy") for m in extra["mode"]]),
                component=np.array([str(c or "") for c in extra.get("component", [""] * len(items))]),
                health=np.array([_float(h, 1.0) for h in extra.get("health", [1.0] * len(items))]),
                failure=np.array([bool(_float(f, 0.0)) for f in extra.get("failure", [0] * len(items))]),
                rul_s=np.array([_float(r, math.inf) for r in extra.get("rul_s", [None] * len(items))]),
            )
        series.append(RobotSeries(robot, f"{source}:{robot}", table_values[:, 0], table_values[:, 1:], truth))
    if not series:
        raise DataError(f"{source}: no usable rows (all {len(quarantine)} quarantined)")
    return Dataset(schema.canonical_channels, series, quarantine, digest.hexdigest(), [source])


def _float(value: Any, default: float) -> float:
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


def split_sql_dataset(url: str, table: str, config: TrainerConfig) -> tuple[Dataset, Dataset]:
    """Train and test sets from one table, split by robot (every fourth robot tests), never by row."""
    dataset = read_sql_dataset(url, table, config.record_schema())
    if len(dataset.series) < 2:
        raise DataError(
            f"{dataset.sources[0]}: one robot only; a robot-wise split needs two (or pass --test-csv)"
        )
    return split_by_robot(dataset)


def load_logs_into_sql(path: Path, url: str, table: str, config: TrainerConfig) -> int:
    """Import CSV logs (and truth) into a SQL table in the layout `read_sql_dataset` reads; returns rows."""
    import sqlalchemy

    schema = config.record_schema()
    dataset = DataExtractionAnalysis(schema).extract(path)
    metadata = sqlalchemy.MetaData()
    columns = [
        sqlalchemy.Column(ROBOT_COLUMN, sqlalchemy.String(64), nullable=False),
        sqlalchemy.Column(schema.timestamp_field, sqlalchemy.Float, nullable=False),
        *(sqlalchemy.Column(name, sqlalchemy.Float) for name in schema.channels),
        sqlalchemy.Column("mode", sqlalchemy.String(32)),
        sqlalchemy.Column("component", sqlalchemy.String(32)),
        sqlalchemy.Column("health", sqlalchemy.Float),
        sqlalchemy.Column("failure", sqlalchemy.Integer),
        sqlalchemy.Column("rul_s", sqlalchemy.Float),
    ]
    sql_table = sqlalchemy.Table(table, metadata, *columns)
    engine = _engine(url)
    names = [c.name for c in columns]
    written = 0
    try:
        with engine.begin() as connection:
            metadata.create_all(connection)
            for series in dataset.series:
                truth = series.truth
                for start in range(0, len(series), _FETCH):
                    stop = min(start + _FETCH, len(series))
                    records = []
                    for i in range(start, stop):
                        values = [series.robot, float(series.timestamps[i]), *series.values[i].tolist()]
                        if truth is not None:
                            rul = float(truth.rul_s[i])
                            values += [
                                str(truth.mode[i]),
                                str(truth.component[i]),
                                float(truth.health[i]),
                                int(truth.failure[i]),
                                rul if math.isfinite(rul) else None,
                            ]
                        else:
                            values += [None] * 5
                        records.append(dict(zip(names, values, strict=True)))
                    connection.execute(sql_table.insert(), records)
                    written += len(records)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise SourceError(f"{_safe(url)}: cannot write table {table!r}: {exc}") from None
    finally:
        engine.dispose()
    return written
