"""Offline scoring of recorded logs with the agent's own pipeline and policy (``robotpm-agent replay``).

`replay_files` reads recorded log files of one configured stream, oldest first, with
the follower's own line reader (`agent.ingest.reader.LineReader`: headers, over-long
and unterminated lines as live), and hands the lines to the very `StreamPipeline` and
`AlertPolicy` the daemon runs: the same records, windows, features, scores and alert
events. Event ids depend only on the robot, stream, model, alert head, window number
and state, so an event replayed here has the ``event_id`` the live agent gave (or
would give) it for the same file read from its first line. No broker and no state
store are involved.

It writes into an output directory, each file complete or not at all (written
beside, then renamed):

* ``scores.csv``: one row per scored window: its number, first and last timestamp,
  source file and byte range, then each alert head's score (``repr`` of the float);
* ``alerts.jsonl``: the alert events, one JSON object a line, as published on MQTT,
  except that ``emitted_at`` is the window's end (data time, not the wall clock) and
  ``replayed`` is true: the two files are byte-for-byte the same on every run;
* ``summary.json``: the model (and whether it was verified), files, line, window and
  event counts, refused lines by reason, events the policy's rate limits held back,
  the stream's measured sample rate against the model's, and why the live agent would
  report the stream degraded (e.g. logs at another rate than the model's);
* ``quarantine.jsonl``: the refused lines, as the agent's quarantine writes them.

The model (`load_replay_model`) is the one the agent would load (the newest usable
store version, else the bundled one), or a candidate directory verified as the
agent verifies store models (signature and expiry, size and sha256, the static
checks, the limited probe when ``isolate`` is on, graph interface, golden test),
without writing to the store. A candidate that fails verification
is refused, unless the caller asks for it anyway: it is then scored and marked
unverified, with the reason, in ``summary.json``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from agent import __version__
from agent.config import AgentConfig
from agent.contract.alerts import AlertEvent, WindowRef
from agent.contract.errors import ConfigError, ContractError
from agent.contract.manifest import ModelManifest
from agent.contract.streams import StreamConfig
from agent.errors import IngestError, ModelError, ModelRejectedError
from agent.ingest import LineBlock, Quarantine
from agent.ingest.reader import LineReader
from agent.ingest.tracked import TrackedFile, open_file
from agent.policy import AlertPolicy, head_key
from agent.seams import FloatArray, Policy, Scorer, SystemClock
from agent.streams.pipeline import StreamPipeline

if TYPE_CHECKING:
    _Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]
else:  # not subscriptable at run time, where the API docs (pdoc) evaluate annotations
    _Subcommands = argparse._SubParsersAction

SCORES_FILE = "scores.csv"
ALERTS_FILE = "alerts.jsonl"
SUMMARY_FILE = "summary.json"
QUARANTINE_FILE = "quarantine.jsonl"


@dataclass(frozen=True, slots=True)
class ReplayModel:
    """The scorer a replay uses, where it came from, and whether it passed the agent's verification."""

    scorer: Scorer
    source: str
    verified: bool
    refusal: str | None = None
    """Why verification refused it (only for a model scored unverified on request)."""


@dataclass(slots=True)
class ReplaySummary:
    """What one replay read, scored and emitted."""

    model: ReplayModel
    stream: str
    files: list[str]
    lines: int = 0
    windows: int = 0
    events: dict[str, int] = field(default_factory=dict)
    quarantined: dict[str, int] = field(default_factory=dict)
    suppressed: dict[str, int] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)
    """The stream's measured rate against the model's (`agent.streams.sampling`)."""
    degraded: str | None = None
    """Why the live agent would report the stream degraded (e.g. another sample rate), None if not."""

    def to_json(self) -> dict[str, Any]:
        """The summary as written to ``summary.json``."""
        manifest = self.model.scorer.manifest
        return {
            "agent_version": __version__,
            "stream": self.stream,
            "files": self.files,
            "model": {
                "label": manifest.label,
                "sha256": manifest.sha256,
                "source": self.model.source,
                "verified": self.model.verified,
                "refusal": self.model.refusal,
            },
            "lines": self.lines,
            "windows": self.windows,
            "events": dict(sorted(self.events.items())),
            "quarantined": dict(sorted(self.quarantined.items())),
            "suppressed": dict(sorted(self.suppressed.items())),
            "sampling": self.sampling,
            "degraded": self.degraded,
        }


def pick_stream(config: AgentConfig, name: str | None) -> StreamConfig:
    """The configured stream called `name`, or the only one; `ConfigError` otherwise."""
    names = [s.name for s in config.streams]
    if name is None:
        if len(config.streams) == 1:
            return config.streams[0]
        raise ConfigError("replay", "--stream", f"the config has several streams {names}: name one")
    for stream in config.streams:
        if stream.name == name:
            return stream
    raise ConfigError("replay", "--stream", f"no stream {name!r} in the config (have {names})")


def load_replay_model(
    config: AgentConfig, stream: StreamConfig, model_dir: Path | None = None, *, unverified: bool = False
) -> ReplayModel:
    """The model to replay with: the agent's own choice, or the candidate in `model_dir`.

    A candidate is verified as the agent verifies store models; when that fails,
    `ModelError` is raised unless `unverified`, in which case it is loaded without
    the signature and expiry checks (its bytes must still match its manifest) and
    returned marked unverified, with the reason.
    """
    from agent.models.scorer import OnnxScorer  # onnxruntime only once a model is wanted
    from agent.models.slot import ModelSlot

    def unfit(manifest: ModelManifest) -> str | None:
        have = stream.record_schema().canonical_channels
        missing = [c for c in manifest.feature_spec.channels if c not in have]
        return f"stream {stream.name} provides no channels {missing}" if missing else None

    if model_dir is None:
        scorer = ModelSlot(config.model).load_initial(unfit=unfit)
        return ReplayModel(scorer, "agent.model", verified=True)
    try:
        candidate = _admit_as_the_store_does(config, model_dir)
    except (ContractError, ModelError) as exc:
        if not unverified:
            raise
        fallback = OnnxScorer.load(model_dir)  # as a trusted source: size, sha256 and static checks only
        return ReplayModel(fallback, str(model_dir), verified=False, refusal=str(exc))
    return ReplayModel(candidate, str(model_dir), verified=True)


def _admit_as_the_store_does(config: AgentConfig, model_dir: Path) -> Scorer:
    """The checks `agent.models.slot.ModelSlot` runs on a store model, without touching the store.

    Signature and expiry, size, sha256 and the static checks, the limited probe when
    ``agent.model.isolate`` is on, then the golden test.
    """
    from agent.models.probe import ProbeLimits, probe_model
    from agent.models.scorer import OnnxScorer
    from agent.models.verify import ModelVerifier

    verifier = ModelVerifier.from_config(config.model)
    verified = verifier.verify_manifest(model_dir)
    model = verifier.check_content(verified)
    if config.model.isolate:
        verdict = probe_model(model.manifest_bytes, model.model_bytes, ProbeLimits.from_config(config.model))
        if not verdict.ok:
            raise ModelRejectedError(f"{verified.manifest.label}: {verdict.reason}")
    scorer = OnnxScorer(model.model_bytes, verified.manifest)
    scorer.check_golden()
    return scorer


class _ScoreTable:
    """Writes one CSV row per scored window: where it is, then every head's score."""

    def __init__(self, handle: IO[str], manifest: ModelManifest) -> None:
        self._writer = csv.writer(handle, lineterminator="\n")
        self._heads = manifest.heads
        self._writer.writerow(
            [
                "window",
                "start",
                "end",
                "source_file",
                "byte_start",
                "byte_end",
                *(head_key(h.component, h.failure_mode) for h in self._heads),
            ]
        )

    def add(self, scores: Mapping[str, FloatArray], windows: Sequence[WindowRef]) -> None:
        n = len(windows)
        columns = [
            np.asarray(scores[h.output], dtype=np.float64).reshape(n, -1)[:, h.column] for h in self._heads
        ]
        for row in range(n):
            w = windows[row]
            self._writer.writerow(
                [
                    w.index,
                    repr(w.start),
                    repr(w.end),
                    w.source_file,
                    w.byte_start,
                    w.byte_end,
                    *(repr(float(c[row])) for c in columns),
                ]
            )


class _RecordingPolicy:
    """The agent's `AlertPolicy`, with every scored window batch also written to the score table."""

    def __init__(self, policy: AlertPolicy, table: _ScoreTable) -> None:
        self._policy = policy
        self._table = table

    def evaluate(
        self, scores: Any, windows: Sequence[WindowRef], features: FloatArray, *, replayed: bool
    ) -> list[AlertEvent]:
        self._table.add(scores, windows)
        return self._policy.evaluate(scores, windows, features, replayed=replayed)

    def state(self) -> dict[str, Any]:
        return self._policy.state()

    def restore(self, state: dict[str, Any] | None) -> None:
        self._policy.restore(state)

    def use_model(self, manifest: ModelManifest) -> None:
        self._policy.use_model(manifest)

    def counters(self) -> dict[str, Any]:
        return self._policy.counters()


def recorded_blocks(paths: Sequence[Path], stream: StreamConfig, config: AgentConfig) -> Iterator[LineBlock]:
    """The line blocks of recorded files, in order, read as the follower reads a finished file.

    Each file is read to its end in ``ingest.read_chunk_bytes`` pieces; what follows its
    last newline is refused as ``unterminated`` (the file is complete: nothing more comes).
    A CSV file without a header line continues with the previous file's header.
    """
    counters: Counter[str] = Counter()
    reader = LineReader(stream, config.ingest, counters)
    for rank, path in enumerate(paths):
        opened = open_file(str(path))
        if opened is None:
            raise IngestError(f"{path}: cannot open the file")
        fd, st = opened
        try:
            tracked = TrackedFile(fd, st.st_dev, st.st_ino, str(path), rank, stream.format == "csv", 0.0)
            tracked.last_size = st.st_size
            while True:
                out: list[LineBlock] = []
                before = tracked.offset
                reader.read_file(tracked, config.ingest.read_chunk_bytes, out)
                yield from out
                if tracked.offset == before:
                    break
            out = []
            reader.settle(tracked, out)
            yield from out
        finally:
            os.close(fd)


def replay_files(
    config: AgentConfig,
    stream: StreamConfig,
    paths: Sequence[Path],
    model: ReplayModel,
    out_dir: Path,
) -> ReplaySummary:
    """Score `paths` (one stream's files, oldest first) and write the outputs into `out_dir`.

    Raises `IngestError` for a file that cannot be read, `RecordError` when the
    stream's channel mapping cannot feed the model; nothing is left half-written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = model.scorer.manifest
    summary = ReplaySummary(model, stream.name, [str(p) for p in paths])
    for stale in (out_dir / QUARANTINE_FILE, out_dir / f"{QUARANTINE_FILE}.1"):
        stale.unlink(missing_ok=True)  # refused lines of an earlier replay into the same directory
    quarantine = Quarantine(out_dir / QUARANTINE_FILE, config.ingest.quarantine_max_bytes)
    with _Staged(out_dir / SCORES_FILE) as scores_file, _Staged(out_dir / ALERTS_FILE) as alerts_file:
        policy = AlertPolicy.for_stream(manifest, stream, config, SystemClock())
        recording: Policy = _RecordingPolicy(policy, _ScoreTable(scores_file, manifest))
        pipeline = StreamPipeline(stream, config.ingest, model.scorer, recording, quarantine)
        pipeline.restore(None)
        events: Counter[str] = Counter()
        for block in recorded_blocks(paths, stream, config):
            for event in pipeline.process([block], replayed=True):
                stamped = event.model_copy(
                    update={"emitted_at": datetime.fromtimestamp(event.window.end, tz=timezone.utc)}
                )
                alerts_file.write(stamped.model_dump_json() + "\n")
                events[event.state] += 1
    counters = pipeline.counters
    summary.lines = counters.lines
    summary.windows = counters.windows
    summary.events = dict(events)
    summary.quarantined = dict(counters.by_reason)
    summary.suppressed = dict(policy.counters().get("suppressed", {}))
    summary.sampling = pipeline.sampling.status()
    summary.degraded = pipeline.degraded_reason()
    with _Staged(out_dir / SUMMARY_FILE) as handle:
        handle.write(json.dumps(summary.to_json(), indent=2) + "\n")
    return summary


class _Staged:
    """A text file written beside its final name and renamed into place only when complete."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._partial = path.with_name(f".{path.name}.partial")
        self._handle: io.TextIOWrapper | None = None

    def __enter__(self) -> io.TextIOWrapper:
        self._handle = open(self._partial, "w", encoding="utf-8", newline="")
        return self._handle

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        assert self._handle is not None
        self._handle.close()
        if kind is None:
            os.replace(self._partial, self._path)
        else:
            self._partial.unlink(missing_ok=True)


def add_replay_arguments(commands: _Subcommands) -> None:
    """Register ``robotpm-agent replay`` on the CLI's sub-command parser."""
    text = "score recorded log files offline with the agent's pipeline, policy and model"
    cmd = commands.add_parser("replay", help=text, description=f"{text}; see agent.replay.")
    cmd.add_argument(
        "files", nargs="+", type=Path, metavar="FILE", help="log files of one stream, oldest first"
    )
    cmd.add_argument("--config", type=Path, default=Path("config.toml"), help="config file (TOML)")
    cmd.add_argument("--profile", default=None, help="profile to apply (dev, test, prod, …)")
    cmd.add_argument(
        "--stream", default=None, help="the configured stream the files belong to (default: the only one)"
    )
    cmd.add_argument(
        "--model",
        type=Path,
        default=None,
        help="score with this model directory (default: the agent's model)",
    )
    cmd.add_argument(
        "--unverified",
        action="store_true",
        help="score a --model that fails the agent's verification anyway, marked unverified in summary.json",
    )
    cmd.add_argument("--out", type=Path, default=Path("replay"), help="output directory (default ./replay)")


def replay_command(config: AgentConfig, args: argparse.Namespace) -> int:
    """Run ``robotpm-agent replay``; returns 0 (errors propagate to the CLI's exit codes)."""
    stream = pick_stream(config, args.stream)
    model = load_replay_model(config, stream, args.model, unverified=args.unverified)
    if not model.verified:
        print(f"robotpm-agent: warning: scoring an UNVERIFIED model: {model.refusal}", file=sys.stderr)
    summary = replay_files(config, stream, args.files, model, args.out)
    if summary.degraded is not None:
        print(f"robotpm-agent: warning: stream {stream.name} degraded: {summary.degraded}", file=sys.stderr)
    events = ", ".join(f"{n} {state}" for state, n in sorted(summary.events.items())) or "no events"
    print(
        f"replayed {summary.lines} lines of {len(summary.files)} file(s) with {model.scorer.manifest.label}"
        f"{'' if model.verified else ' (unverified)'}: {summary.windows} windows, {events}, "
        f"{sum(summary.quarantined.values())} refused line(s) → {args.out}"
    )
    return 0
