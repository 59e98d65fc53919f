"""Small simulated fleets for trainer tests: enough robots and faults to train on in seconds."""

from __future__ import annotations

from pathlib import Path

from robotpm_sim.fleet import simulate_fleet


def small_fleet(root: Path, seed: int) -> tuple[Path, Path]:
    """4 training robots (seed) and 2 test robots (seed + 1), 1,500 s at 10 Hz, short faults.

    Returns the train and test log directories under `root`.
    """
    common = {"seconds": 1500.0, "rate_hz": 10.0, "fault_duration_s": 150.0, "mean_healthy_s": 200.0}
    simulate_fleet(root / "train", robots=4, seed=seed, **common)
    simulate_fleet(root / "test", robots=2, seed=seed + 1, **common)
    return root / "train", root / "test"


STOP_COLUMN = "protective_stop "
"""The cobot export's stop flag, named with the trailing space its controller writes."""


def cobot_export(
    fleet: Path, out: Path, prefix: str = "", stop_s: float = 5.0
) -> list[tuple[str, float, str, str]]:
    """The simulator fleet as a controller would export it: no truth.csv, a stop-flag column instead.

    The flag is "True" from each failure of the truth for `stop_s` seconds, else "False";
    robot directories are named `prefix` + the simulator's name. Returns the failures as
    (robot, time, mode, component), for writing an event log.
    """
    failures: list[tuple[str, float, str, str]] = []
    for robot in sorted(p for p in fleet.iterdir() if p.is_dir()):
        truth = (robot / "truth.csv").read_text().splitlines()[1:]
        stamps = [float(row.split(",")[0]) for row in truth]
        fails = [i for i, row in enumerate(truth) if row.split(",")[5] == "1"]
        name = prefix + robot.name
        for i in fails:
            previous = truth[max(i - 1, 0)].split(",")
            failures.append((name, stamps[i], previous[2], previous[3] or "arm"))
        stopped = [False] * len(truth)
        for i in fails:
            j = i
            while j < len(truth) and stamps[j] - stamps[i] < stop_s:
                stopped[j] = True
                j += 1
        lines = (robot / "arm1.csv").read_text().splitlines()
        (out / name).mkdir(parents=True, exist_ok=True)
        body = [f"{line},{stopped[k]}" for k, line in enumerate(lines[1:])]
        (out / name / "arm1.csv").write_text("\n".join([f"{lines[0]},{STOP_COLUMN}", *body]) + "\n")
    return failures
