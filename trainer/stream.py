"""Stream mode: watch an incoming-data directory, retrain when enough new data arrived, promote via the gate.

``robotpm-train --mode stream`` polls ``trainer.incoming.incoming`` (a fleet directory:
one sub-directory per robot with its logs and truth). When the logs hold at least
``min_new_rows`` more lines than at the last training, or a drift report asks for it
(a file ``RETRAIN``, or a ``drift*.json`` in that directory: an agent's drift report
from ``…/<robot>/drift`` with ``"retrain": true``, as ``robotpm-alerts --drift-dir``
writes them, or a bare ``{"retrain": true}``), it trains on all of it (robots split
for testing), writes a new registry version and promotes it only if it beats the
champion on the same held-out robots. Reports that led to a training are moved to
``trainer.work_dir/drift-consumed/``, so one report triggers one training. The state
(rows at the last training) lives in ``trainer.work_dir/stream_state.json``.
"""

from __future__ import annotations

import json
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from agent.contract.alerts import DriftReport
from trainer.config import TrainerConfig
from trainer.errors import DataError, GateError
from trainer.stages.extraction import DataExtractionAnalysis, Dataset, discover_logs, split_by_robot

STATE_FILE = "stream_state.json"
CONSUMED_DIR = "drift-consumed"


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


def drift_reports(incoming: Path) -> list[Path]:
    """The drift report files in the incoming directory that ask for retraining."""
    asking = []
    for path in sorted(incoming.glob("drift*.json")):
        try:
            text = path.read_text(encoding="utf-8")
            try:
                retrain = DriftReport.model_validate_json(text).retrain
            except ValidationError:
                retrain = json.loads(text).get("retrain") is True  # a hand-written request
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            continue
        if retrain:
            asking.append(path)
    return asking


def drift_requested(incoming: Path) -> bool:
    """Whether a ``RETRAIN`` file or a drift report in the incoming directory asks for retraining."""
    return (incoming / "RETRAIN").exists() or bool(drift_reports(incoming))


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
    reports = drift_reports(incoming)
    drift = bool(reports) or (incoming / "RETRAIN").exists()
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
    consumed = config.work_dir / CONSUMED_DIR
    consumed.mkdir(exist_ok=True)
    for report in reports:
        report.replace(consumed / report.name)
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
