"""Training data from SQL (`--db`): a real SQLite file, a real PostgreSQL server, and the failures."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest

from agent.contract.manifest import ModelManifest
from robotpm_sim.fleet import simulate_fleet
from trainer import cli
from trainer.config import TrainerConfig
from trainer.errors import DataError, SourceError
from trainer.sources.sql import load_logs_into_sql, read_sql_dataset

CONFIG = """
[trainer]
model_name = "arm-sql"
[trainer.features]
window = 80
hop = 40
[trainer.model]
n_estimators = 6
max_depth = 6
[trainer.labels]
horizon_s = 60.0
"""
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="module", name="fleet")
def _fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fleet")
    simulate_fleet(
        root, robots=5, seconds=1200.0, rate_hz=10.0, seed=5, fault_duration_s=150.0, mean_healthy_s=200.0
    )
    return root


@pytest.fixture(name="config")
def _config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


class TestSqlite:
    def test_trains_from_a_sqlite_file(self, fleet: Path, config: Path, tmp_path: Path) -> None:
        """Logs loaded with `import-sql` into SQLite train a model with `--db sqlite:///…`, split by robot."""
        url = f"sqlite:///{tmp_path / 'fleet.db'}"
        assert cli.main(["import-sql", str(fleet), "--db", url, "--config", str(config)]) == 0
        with sqlite3.connect(tmp_path / "fleet.db") as connection:
            assert connection.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 5 * 12_000
        out = tmp_path / "models"
        assert cli.main(["--config", str(config), "--db", url, "--out", str(out), "--no-report"]) == 0
        manifest = ModelManifest.read(out / "arm-sql" / "1")
        assert manifest.training["data_hash"]

    def test_bad_rows_are_quarantined_with_their_location(self, fleet: Path, tmp_path: Path) -> None:
        """NULL and non-numeric values are left out and reported with reason and row."""
        path = tmp_path / "fleet.db"
        load_logs_into_sql(fleet / "robot-001", f"sqlite:///{path}", "samples", TrainerConfig())
        with sqlite3.connect(path) as connection:
            connection.execute("UPDATE samples SET A1_I = NULL WHERE rowid = 10")
            connection.execute("UPDATE samples SET A2_T = 'hot' WHERE rowid = 20")
        dataset = read_sql_dataset(f"sqlite:///{path}", "samples", TrainerConfig().record_schema())
        assert dataset.n_rows == 12_000 - 2
        assert sorted((q.line, q.reason) for q in dataset.quarantine) == [(10, "null"), (20, "not_numeric")]
        assert dataset.has_truth

    def test_missing_column_names_table_and_column(self, tmp_path: Path) -> None:
        """A table without a mapped channel column is refused naming the column."""
        path = tmp_path / "bad.db"
        with sqlite3.connect(path) as connection:
            connection.execute("CREATE TABLE samples (robot TEXT, ts REAL, A1_I REAL)")
            connection.execute("INSERT INTO samples VALUES ('r', 1.0, 2.0)")
        with pytest.raises(DataError, match=r"'samples' lacks column\(s\) \['A2_I'"):
            read_sql_dataset(f"sqlite:///{path}", "samples", TrainerConfig().record_schema())

    def test_missing_table_and_empty_table(self, tmp_path: Path) -> None:
        """A missing table and an empty one are clear DataErrors."""
        path = tmp_path / "empty.db"
        schema = TrainerConfig().record_schema()
        columns = ", ".join(f"{c} REAL" for c in schema.channels)
        with sqlite3.connect(path) as connection:
            connection.execute(f"CREATE TABLE samples (robot TEXT, ts REAL, {columns})")
        with pytest.raises(DataError, match="no table 'other'"):
            read_sql_dataset(f"sqlite:///{path}", "other", schema)
        with pytest.raises(DataError, match="is empty"):
            read_sql_dataset(f"sqlite:///{path}", "samples", schema)

    def test_unreachable_database_exits_1_and_writes_nothing(
        self, config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A database that cannot be reached fails with exit 1, its URL (no password) and nothing written."""
        out = tmp_path / "models"
        url = "postgresql+psycopg://user:secret@127.0.0.1:1/none"
        assert cli.main(["--config", str(config), "--db", url, "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert "cannot reach the database" in err
        assert "secret" not in err
        assert not out.exists()
        with pytest.raises(SourceError):
            read_sql_dataset(
                f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}", "samples", TrainerConfig().record_schema()
            )


@pytest.mark.postgres
class TestPostgres:
    def test_round_trip_through_a_real_postgres(self, fleet: Path, config: Path, tmp_path: Path) -> None:
        """Logs imported into PostgreSQL read back equal and train a model with `--db postgresql+psycopg://…`."""
        import sqlalchemy

        table = f"samples_{uuid.uuid4().hex[:8]}"
        try:
            load_logs_into_sql(fleet, POSTGRES_URL, table, TrainerConfig())
            dataset = read_sql_dataset(POSTGRES_URL, table, TrainerConfig().record_schema())
            assert dataset.n_rows == 5 * 12_000
            assert sorted(s.robot for s in dataset.series) == [f"robot-{n:03d}" for n in range(1, 6)]
            out = tmp_path / "models"
            argv = ["--config", str(config), "--db", POSTGRES_URL, "--table", table, "--out", str(out)]
            assert cli.main([*argv, "--no-report"]) == 0
            assert ModelManifest.read(out / "arm-sql" / "1").version == 1
        finally:
            engine = sqlalchemy.create_engine(POSTGRES_URL)
            with engine.begin() as connection:
                connection.execute(sqlalchemy.text(f'DROP TABLE IF EXISTS "{table}"'))
            engine.dispose()
