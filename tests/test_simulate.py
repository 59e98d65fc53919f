"""The fleet simulator: deterministic, physical fault signatures, aligned truth, logs rotated by size."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.config import load_agent_config
from agent.contract.records import RecordParser, RecordSchema
from robotpm_sim.arm import ArmSimulator
from robotpm_sim.cli import main as sim_main
from robotpm_sim.faults import COMPONENTS, MODES, Fault, GroundTruth, random_schedule
from robotpm_sim.fleet import robot_seed, simulate_fleet, simulate_history
from robotpm_sim.formatting import format_records, format_truth
from robotpm_sim.live import run_live
from robotpm_sim.records import COLUMNS, CURRENT, SPEED, TEMPERATURE, TOOL
from robotpm_sim.rotating import iter_log_lines
from tests.agent_process import reaped

ROOT = Path(__file__).resolve().parent.parent
RATE = 10.0


def _schema() -> RecordSchema:
    return load_agent_config(ROOT / "config.toml").streams[0].record_schema()


def _zero_speed_runs(values: np.ndarray, truth: GroundTruth, min_samples: int) -> list[tuple[int, str]]:
    """Start index and truth mode of every run of >= min_samples rows where all six speeds are 0."""
    still = (values[:, SPEED] == 0.0).all(axis=1).astype(np.int8)
    edges = np.diff(np.concatenate(([0], still, [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [
        (int(s), str(MODES[truth.mode[s]])) for s, e in zip(starts, ends, strict=True) if e - s >= min_samples
    ]


def _one_fault(mode: str, joint: int = 3, rate: float = RATE) -> tuple[np.ndarray, GroundTruth]:
    """600 s healthy, then `mode` for 1200 s until failure, then 300 s repaired."""
    _, values, truth = simulate_history(
        "robot-t", 2100, rate, seed=11, faults=[Fault(mode, onset_s=600, duration_s=1200, joint=joint)]
    )
    return values, truth


class TestDeterminism:
    def test_same_seed_writes_byte_identical_histories(self, tmp_path: Path) -> None:
        """Two runs of `history` with one seed produce the same bytes in every file."""
        for run in ("a", "b"):
            assert (
                sim_main(
                    [
                        "history",
                        "--out",
                        str(tmp_path / run),
                        "--robots",
                        "2",
                        "--hours",
                        "0.5",
                        "--seed",
                        "7",
                        "--rotate-bytes",
                        "300000",
                    ]
                )
                == 0
            )
        files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
        files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
        assert files_a == files_b
        assert len(files_a) > 4  # rotated segments plus truth files
        for rel in files_a:
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()

    def test_other_seed_gives_other_data(self) -> None:
        """A different seed changes the noise and the fault schedule."""
        _, a, _ = simulate_history("robot-001", 60, RATE, seed=1)
        _, b, _ = simulate_history("robot-001", 60, RATE, seed=2)
        assert not np.array_equal(a[:, CURRENT], b[:, CURRENT])
        assert random_schedule(86_400, 1) != random_schedule(86_400, 2)

    def test_samples_generated_piecewise_equal_those_generated_at_once(self) -> None:
        """A live stream (small pieces) and a history (one go) hold the same values."""
        faults = [Fault("collision", onset_s=100, duration_s=900, joint=1)]
        whole, truth = ArmSimulator("r", rate_hz=50, seed=3, faults=faults).samples(0, 60_000)
        sim = ArmSimulator("r", rate_hz=50, seed=3, faults=faults)
        bounds = [0, 7, 8, 8192, 9000, 16_383, 16_385, 40_000, 60_000]
        pieces = [sim.samples(lo, hi) for lo, hi in itertools.pairwise(bounds)]
        assert np.array_equal(whole, np.concatenate([p[0] for p in pieces]))
        assert np.array_equal(truth.mode, np.concatenate([p[1].mode for p in pieces]))

    def test_fleet_robot_equals_its_python_api_history(self, tmp_path: Path) -> None:
        """robot-002 of a fleet is exactly simulate_history('robot-002', seed) — files and API agree."""
        simulate_fleet(tmp_path, robots=2, seconds=300, rate_hz=RATE, seed=5)
        header, values, _ = simulate_history("robot-002", 300, RATE, seed=5)
        text = (tmp_path / "robot-002" / "arm1.csv").read_bytes()
        assert text == (",".join(header) + "\n").encode() + format_records(values)
        assert robot_seed(5, "robot-001") != robot_seed(5, "robot-002")


class TestFormatting:
    def test_vectorised_records_equal_printf_formatting(self) -> None:
        """format_records writes exactly what "%.3f,%d,…" % row gives, signs and zeros included."""
        _, values, _ = simulate_history("robot-001", 3000, RATE, seed=3)
        odd = values[:3].copy()
        odd[0, 2:] = 0.0
        odd[1, 14:20] = [-0.01, -123.45, 0.5, -0.5, 99.99, -99.99]
        odd[2, 0] = 9.999
        rows = np.concatenate([values, odd])
        row = ",".join(["%.3f", "%d", *["%.3f"] * 6, *["%.2f"] * 12, "%.3f"]) + "\n"
        assert format_records(rows) == "".join(row % tuple(r) for r in rows.tolist()).encode()

    def test_vectorised_truth_equals_line_by_line_formatting(self) -> None:
        """format_truth matches a plain per-row rendering, with rul_s empty where no failure is ahead."""
        _, truth = _one_fault("collision")
        expected = b"".join(
            b"%.3f,robot-t,%s,%s,%.4f,%d,%s\n"
            % (ts, MODES[m].encode(), COMPONENTS[MODES[m]].encode(), h, f, b"" if r != r else b"%.3f" % r)
            for ts, m, h, f, r in zip(
                truth.timestamps.tolist(),
                truth.mode.tolist(),
                truth.health.tolist(),
                truth.failure.tolist(),
                truth.rul_s.tolist(),
                strict=True,
            )
        )
        text = format_truth(truth)
        assert text == expected
        assert text.endswith(b",healthy,,1.0000,0,\n")


class TestSignatures:
    def test_healthy_arm_runs_its_cycle(self) -> None:
        """Healthy: the cycle counter advances every 8 s, joints move, temperatures sit at equilibrium."""
        _, values, truth = simulate_history("robot-h", 600, RATE, seed=1, faults=())
        assert (truth.mode == 0).all()
        assert np.isnan(truth.rul_s).all()
        assert values[-1, 1] - values[0, 1] == 600 // 8 - 1
        assert (np.abs(values[:, SPEED]).max(axis=0) > 30).all()
        temps = values[:, TEMPERATURE]
        assert (temps.std(axis=0) < 1.0).all()
        assert (temps.mean(axis=0) > 25).all()
        assert (temps.mean(axis=0) < 60).all()
        assert not _zero_speed_runs(values, truth, 10)

    def test_bearing_wear_makes_one_joints_current_noisy_and_higher(self) -> None:
        """Bearing wear on A3: its current's cycle-to-cycle variability and mean rise; other joints don't."""
        values, truth = _one_fault("bearing_wear", joint=3)
        cycle = int(8 * RATE)
        lagged = values[cycle:, CURRENT] - values[:-cycle, CURRENT]  # same cycle phase, one cycle apart
        healthy = slice(0, 5000)
        worn = slice(16_000, 17_900)  # the last stretch before failure at sample 18 000
        ratio = lagged[worn].std(axis=0) / lagged[healthy].std(axis=0)
        assert ratio[2] > 4.0
        assert np.delete(ratio, 2).max() < 1.5
        mean_rise = values[worn, CURRENT].mean(axis=0) - values[healthy, CURRENT].mean(axis=0)
        assert mean_rise[2] > 0.5
        assert np.abs(np.delete(mean_rise, 2)).max() < 0.1
        assert set(truth.components[6000:18_000]) == {"drive_train"}

    def test_overheating_lifts_one_joint_above_thermal_equilibrium(self) -> None:
        """Overheating on A2: its temperature climbs 20+ K above equilibrium, and falls back after repair."""
        values, _ = _one_fault("overheating", joint=2)
        temps = values[:, TEMPERATURE]
        healthy = temps[:5000].mean(axis=0)
        late = temps[17_400:17_990].mean(axis=0)
        after_repair = temps[18_500:].mean(axis=0)
        assert late[1] - healthy[1] > 20
        assert np.abs(np.delete(late - healthy, 1)).max() < 1.0
        assert abs(after_repair[1] - healthy[1]) < 1.0

    def test_collisions_cause_protective_stops_that_become_more_frequent(self) -> None:
        """Collision: current spikes then all speeds exactly 0 for seconds; more stops late than early."""
        values, truth = _one_fault("collision")
        runs = _zero_speed_runs(values, truth, int(1.5 * RATE))
        assert runs
        assert {mode for _, mode in runs} == {"collision"}
        early = [s for s, _ in runs if 6000 <= s < 12_000]
        late = [s for s, _ in runs if 12_000 <= s <= 18_000]
        assert len(late) > len(early) + 3
        healthy_peak = values[:6000, CURRENT].max(axis=0)
        for start, _ in runs:  # the impact: some joint well above anything it drew while healthy
            assert (values[start : start + 3, CURRENT].max(axis=0) / healthy_peak).max() > 1.3
        # stops pause the cycle: fewer cycles completed than in the same time without stops
        cycles_run = values[18_000, 1] - values[6000, 1]
        assert cycles_run < (18_000 - 6000) / RATE / 8 - 5

    def test_gripper_wear_makes_closing_slower_and_hungrier(self) -> None:
        """Gripper wear: tool current stays high longer at closing and holding current rises."""
        rate = 50.0
        values, _ = _one_fault("gripper_wear", rate=rate)
        tool = values[:, TOOL]
        cycles = lambda lo, hi: tool[int(lo * rate) : int(hi * rate)].reshape(-1, int(8 * rate))  # noqa: E731
        healthy = cycles(0, 592)
        worn = cycles(1760, 1800)
        assert (worn > 1.2).sum(axis=1).mean() > 2 * (healthy > 1.2).sum(axis=1).mean()
        assert worn.mean() > 1.2 * healthy.mean()
        assert np.array_equal(
            values[:, CURRENT][:100], _one_fault("gripper_wear", rate=rate)[0][:100, CURRENT]
        )


class TestTruth:
    def test_truth_is_aligned_and_consistent(self) -> None:
        """Truth rows match record timestamps; health falls to 0 at failure, then the robot is repaired."""
        values, truth = _one_fault("overheating")
        assert np.array_equal(truth.timestamps, values[:, 0])
        fail = np.flatnonzero(truth.failure)
        assert fail.tolist() == [18_000]
        assert truth.health[18_000] == 0.0
        assert truth.rul_s[18_000] == 0.0
        assert MODES[truth.mode[18_000]] == "overheating"
        assert MODES[truth.mode[18_001]] == "healthy"
        assert truth.health[18_001] == 1.0
        assert np.isnan(truth.rul_s[18_001:]).all()
        assert np.allclose(np.diff(truth.rul_s[:18_001]), -1 / RATE)
        health = truth.health[6000:18_001]
        assert (np.diff(health) <= 0).all()
        assert health[0] == 1.0
        assert (truth.health[:6000] == 1.0).all()

    def test_fleet_spends_most_time_healthy_and_shows_every_mode(self, tmp_path: Path) -> None:
        """Over a day, a fleet of six shows all four faults, and is healthy most of the time."""
        modes: list[str] = []
        for number in range(1, 7):
            _, _, truth = simulate_history(f"robot-{number:03d}", 86_400, 0.5, seed=7)
            modes.extend(truth.mode_names.tolist())
        share = {m: modes.count(m) / len(modes) for m in MODES}
        assert share["healthy"] > 0.5
        assert all(share[m] > 0.02 for m in MODES[1:])

    def test_truth_csv_rows_match_log_records_across_rotated_segments(self, tmp_path: Path) -> None:
        """truth.csv has one row per log record, in order, whatever the rotation split."""
        assert (
            sim_main(
                [
                    "history",
                    "--out",
                    str(tmp_path),
                    "--robots",
                    "1",
                    "--hours",
                    "0.5",
                    "--rotate-bytes",
                    "250000",
                ]
            )
            == 0
        )
        robot = tmp_path / "robot-001"
        log_ts = [line.split(b",", 1)[0] for line in iter_log_lines(robot, "arm1.csv")]
        truth_lines = (robot / "truth.csv").read_bytes().splitlines()
        assert truth_lines[0] == b"ts,robot,mode,component,health,failure,rul_s"
        assert [line.split(b",", 1)[0] for line in truth_lines[1:]] == log_ts
        assert len(log_ts) == 18_000


class TestFilesParse:
    def test_rotated_history_parses_with_the_agent_contract_and_no_rejects(self, tmp_path: Path) -> None:
        """Every segment parses with RecordParser and config.toml's mapping: all records, zero rejects."""
        simulate_fleet(tmp_path, robots=1, seconds=1800, rate_hz=RATE, seed=9, rotate_bytes=400_000)
        _, values, _ = simulate_history("robot-001", 1800, RATE, seed=9)
        parser = RecordParser(_schema())
        directory = tmp_path / "robot-001"
        segments = sorted(directory.glob("arm1.csv.*"), key=lambda p: -int(p.suffix[1:]))
        assert len(segments) >= 3
        last: float | None = None
        parsed = []
        for path in [*segments, directory / "arm1.csv"]:
            data = path.read_bytes()
            assert path.stat().st_size <= 400_000
            header, _, body = data.partition(b"\n")
            parser.set_header(header)
            result = parser.parse(body, base_offset=len(header) + 1, last_timestamp=last)
            assert result.rejected == []
            parsed.append(result.batch)
            last = float(result.batch.timestamps[-1])
        assert sum(len(b) for b in parsed) == len(values)
        got = np.concatenate([b.values for b in parsed])
        canonical = [COLUMNS.index(name) for name in _schema().channels]
        assert np.array_equal(got, values[:, canonical])

    def test_jsonl_history_parses_with_the_same_keys(self, tmp_path: Path) -> None:
        """--format jsonl writes the same keys; the JSON-lines parser accepts every line."""
        assert (
            sim_main(
                ["history", "--out", str(tmp_path), "--robots", "1", "--hours", "0.05", "--format", "jsonl"]
            )
            == 0
        )
        schema = _schema().model_copy(update={"format": "jsonl"})
        data = (tmp_path / "robot-001" / "arm1.jsonl").read_bytes()
        result = RecordParser(schema).parse(data)
        assert result.rejected == []
        assert len(result.batch) == 1800


class TestLive:
    def test_live_appends_rotates_by_size_and_loses_no_line(self, tmp_path: Path) -> None:
        """2 s at 2 kHz with 20 kB files: every line lands in exactly one file, in order, none too big."""
        out = tmp_path / "arm1"
        summary = run_live(
            out,
            rate_hz=2000,
            seed=4,
            fault="bearing_wear",
            fault_after_s=0.5,
            fault_duration_s=1.0,
            rotate_bytes=20_000,
            keep=1000,
            duration_s=2.0,
            start_ts=1_800_000_000.0,
            time_scale=4.0,
        )
        assert summary.lines == 4000
        files = sorted(out.iterdir())
        assert summary.rotations == len(files) - 1 > 10
        header = (",".join(COLUMNS) + "\n").encode()
        for path in files:
            data = path.read_bytes()
            assert data.startswith(header)
            assert data.endswith(b"\n")
            assert len(data) <= 20_000
        lines = list(iter_log_lines(out, "arm1.csv"))
        expected, _ = ArmSimulator(
            "robot-001",
            rate_hz=2000,
            seed=4,
            start_ts=1_800_000_000.0,
            faults=[Fault("bearing_wear", 0.5, 1.0, 2)],
        ).samples(0, 4000)
        assert b"".join(lines) == format_records(expected)

    def test_live_keeps_only_the_newest_rotated_files(self, tmp_path: Path) -> None:
        """keep=2: older segments are deleted, .1 holds the lines just before the current file."""
        run_live(
            tmp_path,
            rate_hz=1000,
            seed=1,
            rotate_bytes=5_000,
            keep=2,
            duration_s=1.0,
            time_scale=10.0,
            start_ts=1_800_000_000.0,
        )
        assert sorted(p.name for p in tmp_path.iterdir()) == ["arm1.csv", "arm1.csv.1", "arm1.csv.2"]
        lines = list(iter_log_lines(tmp_path, "arm1.csv"))
        stamps = [float(line.split(b",", 1)[0]) for line in lines]
        assert (np.diff(np.round(np.array(stamps) * 1000)) == 1).all()
        assert stamps[-1] == pytest.approx(1_800_000_000.999)

    def test_live_writes_in_real_time_and_stops_on_the_event(self, tmp_path: Path) -> None:
        """At 200 Hz the file grows while running; setting the stop event ends it with whole lines."""
        stop = threading.Event()
        result: list[object] = []
        thread = threading.Thread(
            target=lambda: result.append(run_live(tmp_path, rate_hz=200, seed=2, stop_event=stop)),
            name="live",
        )
        started = time.monotonic()
        thread.start()
        time.sleep(0.6)
        size_mid = (tmp_path / "arm1.csv").stat().st_size
        time.sleep(0.4)
        stop.set()
        thread.join(5)
        assert not thread.is_alive()
        elapsed = time.monotonic() - started
        data = (tmp_path / "arm1.csv").read_bytes()
        assert data.endswith(b"\n")
        records = data.count(b"\n") - 1
        assert size_mid < len(data)
        assert 0.5 * 200 * 0.6 < records <= 200 * elapsed + 2  # paced by the clock, not as fast as possible

    def test_cli_live_stops_cleanly_on_sigterm(self, tmp_path: Path) -> None:
        """robotpm-sim live exits 0 on SIGTERM, leaving only complete lines and a truth file."""
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "robotpm_sim.cli",
                "live",
                "--out",
                str(tmp_path / "arm1"),
                "--rate-hz",
                "1000",
                "--fault",
                "overheating",
                "--truth",
                str(tmp_path / "truth.csv"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        with reaped(proc):
            log = tmp_path / "arm1" / "arm1.csv"
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and (not log.exists() or log.stat().st_size < 20_000):
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        data = log.read_bytes()
        assert data.endswith(b"\n")
        n = data.count(b"\n") - 1
        assert f"wrote {n} records".encode() in out
        assert (tmp_path / "truth.csv").read_bytes().count(b"\n") - 1 == n


def test_simulator_does_not_import_scikit_learn() -> None:
    """The simulator runs on numpy alone (the demo installs no trainer extra)."""
    code = "import sys, robotpm_sim.fleet, robotpm_sim.live, robotpm_sim.cli; print('sklearn' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.stdout.strip() == "False"
