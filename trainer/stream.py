"""Stream mode: watch an incoming-data directory, retrain when enough new data arrived, promote via the gate.

``robotpm-train --mode stream`` polls ``trainer.incoming.incoming`` (a fleet directory:
one sub-directory per robot with its logs and truth). When the logs hold at least
``min_new_rows`` more lines than at the last training, or a drift report asks for it
(a file ``RETRAIN`` or ``drift*.json`` with ``"retrain": true`` in that directory), it
trains on all of it (robots split for testing), writes a new registry version and
promotes it only if it beats the champion on the same held-out robots. The state
(rows at the last training) lives in ``trainer.work_dir/stream_state.json``.
"""

from __future__ import annotations

import json
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from trainer.config import TrainerConfig
from trainer.errors import DataError, GateError
from trainer.stages.extraction import DataExtractionAnalysis, Dataset, discover_logs, split_by_robot

STATE_FILE = "stream_state.json"


@dataclass(frozen=True, slots=True)
class StreamOutcome:
    """What one check of the incoming directory did."""

    action: str
    """``waiting``, ``trained`` (kept as challenger) or ``promoted``."""
    rows: int
    detail: str = ""


def count_rows(incoming: Path) -> int:
    """Record lines in the incoming logs (newlines minus one header per file)."""
    try:
        found = discover_logs(incoming)
    except DataError:
        return 0
    return sum(max(0, _newlines(path) - 1) for _, files in found for path in files)


def _newlines(path: Path) -> int:
    """Newlines in a file, read in 1 MiB blocks."""
    count = 0
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            count += block.count(b"\n")
    return count


def drift_requested(incoming: Path) -> bool:
    """Whether a drift report in the incoming directory asks for retraining."""
    if (incoming / "RETRAIN").exists():
        return True
    for report in incoming.glob("drift*.json"):
        try:
            if json.loads(report.read_text(encoding="utf-8")).get("retrain") is True:
                return True
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
    return False


def check_once(
    config: TrainerConfig, registry_root: Path | None = None, name: str | None = None
) -> StreamOutcome:
    """Look at the incoming directory once; train and gate when due."""
    from trainer.gate import promote_through_gate
    from trainer.tasks.failure import train_failure_classifier

    incoming = config.incoming.incoming
    state_path = config.work_dir / STATE_FILE
    state = json.loads(state_path.read_text(encoding="utf-8")) if state_path.exists() else {"rows": 0}
    rows = count_rows(incoming)
    drift = drift_requested(incoming)
    if rows - int(state["rows"]) < config.incoming.min_new_rows and not drift:
        return StreamOutcome("waiting", rows, f"{rows - int(state['rows'])} new rows")
    dataset: Dataset = DataExtractionAnalysis.for_config(config).extract(incoming)
    train, test = split_by_robot(dataset)
    result = train_failure_classifier(
        config, train, test, registry_root=registry_root, name=name, report=False
    )
    config.work_dir.mkdir(parents=True, exist_ok=True)
    state_path.write_text(
        json.dumps({"rows": rows, "version": result.manifest.version}) + "\n", encoding="utf-8"
    )
    (incoming / "RETRAIN").unlink(missing_ok=True)
    try:
        promote_through_gate(config, result, registry_root=registry_root, name=name)
    except GateError as exc:
        return StreamOutcome("trained", rows, f"v{result.manifest.version} kept as challenger: {exc}")
    return StreamOutcome("promoted", rows, f"v{result.manifest.version} is the champion")


def run_stream(
    config: TrainerConfig,
    *,
    registry_root: Path | None = None,
    name: str | None = None,
    stop: threading.Event | None = None,
    once: bool = False,
) -> int:
    """Poll until SIGTERM/SIGINT (or `stop`); with `once`, check a single time. Returns the exit code."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    while not stop.is_set():
        outcome = check_once(config, registry_root, name)
        print(f"robotpm-train stream: {outcome.action} ({outcome.rows} rows) {outcome.detail}", flush=True)
        if once:
            break
        stop.wait(config.incoming.poll_interval_s)
    return 0
