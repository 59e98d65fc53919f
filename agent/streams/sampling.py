"""One stream's sample rate against the model's: measured always, resampled when the stream asks.

The model's feature spec may say the rate its windows were cut at
(`agent.contract.sampling.Sampling`). Every parsed batch's timestamps go through a
`RateMonitor`; its verdict against the model's sampling (``ok``, ``rate_mismatch``,
``jitter``, or ``unknown`` while fewer than a few dozen intervals were seen, or
when the model does not say its rate) is logged when it changes and is the
stream's degraded reason (`StreamSampling.degraded_reason`, shown by
``robotpm-agent status``).

With ``resample = true`` in the stream's config, and a model that says its rate,
the samples are put onto the model's grid by the contract's `StreamingResampler`
(the trainer resamples with the same code) before windows are cut: the stream is
then never degraded by its rate, only reported. Without it, windows count the
samples as logged, and a stream at another rate is scored but reported degraded.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import structlog

from agent.contract.errors import RecordError
from agent.contract.manifest import ModelManifest
from agent.contract.records import RecordParser
from agent.contract.sampling import (
    RateMeasure,
    RateMonitor,
    RateVerdict,
    ResamplerState,
    Sampling,
    StreamingResampler,
    measure_rate,
)
from agent.contract.streams import StreamConfig

log = structlog.get_logger("robotpm.pipeline")

PROBE_BYTES: Final = 256 * 1024
"""`logged_rate` reads at most this much of a stream's newest file."""

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class StreamSampling:
    """The stream's rate monitor and, when configured, its resampler onto the model's grid."""

    def __init__(self, stream: StreamConfig, manifest: ModelManifest) -> None:
        self._stream = stream
        self.monitor = RateMonitor()
        self._verdict: RateVerdict = "unknown"
        self._sampling: Sampling | None = None
        self._resampler: StreamingResampler | None = None
        self.use_model(manifest)

    @property
    def resampling(self) -> bool:
        """Whether the stream is put onto the model's grid."""
        return self._resampler is not None

    def use_model(self, manifest: ModelManifest, *, keep_grid: bool = False) -> None:
        """Judge against (and resample for) `manifest`; `keep_grid` continues the grid of an equal spec."""
        sampling = manifest.feature_spec.sampling
        if self._stream.resample and sampling is None:
            log.warning(
                "resample_impossible",
                stream=self._stream.name,
                model=manifest.label,
                reason="the model does not say its sample rate; windows count samples as logged",
            )
        if keep_grid and sampling == self._sampling:
            return
        self._sampling = sampling
        self._resampler = StreamingResampler(sampling) if self._stream.resample and sampling else None

    def take(
        self, timestamps: FloatArray, values: FloatArray, starts: IntArray, ends: IntArray
    ) -> tuple[FloatArray, FloatArray, IntArray, IntArray]:
        """Measure the new samples; return them, or their grid points, with the lines they came from."""
        self.monitor.push(timestamps)
        self._judge()
        if self._resampler is None:
            return timestamps, values, starts, ends
        grid = self._resampler.push(timestamps, values)
        return grid.timestamps, grid.values, starts[grid.source_rows], ends[grid.source_rows]

    def lines_for(self, samples: int) -> int:
        """How many lines surely give no more than `samples` samples (at least 1)."""
        if self._resampler is None:
            return samples
        measured = self.monitor.measure().rate_hz
        grid = self._resampler.sampling.rate_hz
        if not math.isfinite(measured) or measured <= 0:
            return 1
        return max(1, math.floor(samples * min(1.0, measured / grid)))

    def status(self) -> dict[str, Any]:
        """Measured rate and jitter, the model's rate, the verdict and whether the stream is resampled."""
        measure = self.monitor.measure()
        return {
            "rate_hz": None if not math.isfinite(measure.rate_hz) else round(measure.rate_hz, 6),
            "jitter": None if not math.isfinite(measure.jitter) else round(measure.jitter, 6),
            "model_rate_hz": None if self._sampling is None else self._sampling.rate_hz,
            "verdict": self._verdict,
            "resampled": self.resampling,
        }

    def degraded_reason(self) -> str | None:
        """Why the stream's rate makes it degraded, None when it does not (or is resampled)."""
        if self._verdict in ("ok", "unknown") or self._sampling is None or self.resampling:
            return None
        measure = self.monitor.measure()
        if self._verdict == "rate_mismatch":
            return (
                f"sample rate {measure.rate_hz:.4g} Hz, the model was trained at "
                f"{self._sampling.rate_hz:.4g} Hz "
                f"(set resample = true for stream {self._stream.name}, or use a model trained at this rate)"
            )
        return (
            f"sample jitter {measure.jitter:.1%} of the interval, the model tolerates "
            f"{self._sampling.jitter:.1%} (set resample = true for stream {self._stream.name})"
        )

    def state(self) -> dict[str, Any]:
        """JSON-able state: the monitor's intervals and the resampler's grid."""
        return {
            "monitor": self.monitor.state(),
            "resampler": None if self._resampler is None else asdict(self._resampler.state()),
        }

    def restore(self, state: dict[str, Any] | None, *, same_spec: bool) -> None:
        """Resume the monitor; the grid only when the feature spec is the one it was saved with."""
        self.monitor.restore((state or {}).get("monitor"))
        self._judge(quiet=True)
        saved = (state or {}).get("resampler")
        if same_spec and saved and self._resampler is not None:
            last_values = saved.get("last_values")
            self._resampler = StreamingResampler.from_state(
                self._resampler.sampling,
                ResamplerState(
                    t0=saved.get("t0"),
                    last_ts=saved.get("last_ts"),
                    last_values=None if last_values is None else tuple(float(v) for v in last_values),
                    emitted=int(saved.get("emitted", 0)),
                ),
            )

    def _judge(self, *, quiet: bool = False) -> None:
        verdict = self.monitor.verdict(self._sampling)
        if verdict == self._verdict:
            return
        self._verdict = verdict
        if quiet or verdict == "unknown":
            return
        measure = self.monitor.measure()
        emit = log.warning if verdict != "ok" and not self.resampling else log.info
        emit(
            "stream_rate",
            stream=self._stream.name,
            verdict=verdict,
            rate_hz=round(measure.rate_hz, 4),
            jitter=round(measure.jitter, 4),
            model_rate_hz=None if self._sampling is None else self._sampling.rate_hz,
            resampled=self.resampling,
        )


def logged_rate(stream: StreamConfig, max_bytes: int = PROBE_BYTES) -> tuple[Path, RateMeasure] | None:
    """The rate of the stream's newest log file, from its first lines; None without a readable file."""
    files = sorted(
        {p for pattern in stream.patterns for p in stream.directory.glob(pattern) if p.is_file()},
        key=lambda p: p.stat().st_mtime,
    )
    if not files:
        return None
    newest = files[-1]
    try:
        with newest.open("rb") as handle:
            head = handle.read(max_bytes)
    except OSError:
        return None
    parser = RecordParser(stream.record_schema())
    if stream.format == "csv":
        header, _, head = head.partition(b"\n")
        try:
            parser.set_header(header.rstrip(b"\r"))
        except RecordError:
            return None
    complete = head[: head.rfind(b"\n") + 1]
    batch = parser.parse(complete).batch
    return newest, measure_rate(batch.timestamps)


def rate_warnings(streams: tuple[StreamConfig, ...], manifest: ModelManifest) -> list[str]:
    """What ``robotpm-agent check`` warns of, before the model meets data it was not trained for.

    A stream not resampled whose newest file is at another rate (or jitter); a model that
    does not say its rate.
    """
    sampling = manifest.feature_spec.sampling
    if sampling is None:
        return [
            f"model {manifest.label} does not say the sample rate it was trained at: data at another rate "
            "cannot be told apart (retrain it with this version of the trainer)"
        ]
    spec = manifest.feature_spec
    out: list[str] = []
    for stream in streams:
        found = logged_rate(stream)
        if found is None:
            continue
        path, measure = found
        verdict = sampling.judge(measure.rate_hz, measure.jitter)
        if verdict == "ok" or measure.intervals < 2:
            continue
        if stream.resample:
            continue  # the agent puts it onto the model's grid
        seconds = spec.window / measure.rate_hz
        what = (
            f"is at {measure.rate_hz:.4g} Hz, model {manifest.label} was trained at "
            f"{sampling.rate_hz:.4g} Hz: "
            f"its windows of {spec.window} samples would span {seconds:.4g} s instead of "
            f"{spec.window / sampling.rate_hz:.4g} s"
            if verdict == "rate_mismatch"
            else f"has a sample jitter of {measure.jitter:.1%}, model {manifest.label} tolerates "
            f"{sampling.jitter:.1%}"
        )
        out.append(
            f"stream {stream.name}: {path} {what}; set resample = true for the stream, or use a model "
            "trained on data like this"
        )
    return out
