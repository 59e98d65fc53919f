"""The text form of the technician commands' reports (the ``--json`` form is the report itself)."""

from __future__ import annotations

from datetime import datetime, timezone

from agent.technician.shelving import Shelf
from agent.technician.views import (
    AlertsReport,
    ExplainReport,
    JournalEventView,
    OpenAlertView,
    ShelveReport,
    StatusReport,
)


def when(value: datetime | None) -> str:
    """A time for people: UTC, to the second."""
    if value is None:
        return "-"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def size(n: int | None) -> str:
    """Bytes for people."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def seconds(value: float | None) -> str:
    """A duration for people."""
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def shelf_line(shelf: Shelf) -> str:
    """One shelf on one line."""
    return f"{shelf.kind} {shelf.target()} until {when(shelf.until)} by {shelf.by}: {shelf.reason}"


def alerts_text(report: AlertsReport) -> str:
    """``robotpm-agent alerts``."""
    out: list[str] = []
    if report.filters.open:
        out.append(f"{len(report.open_alerts)} open alert(s) on {report.robot_id}")
        out.extend(_open_line(a) for a in report.open_alerts)
        return "\n".join(out) + "\n"
    out.append(
        f"{len(report.events)} event(s) on {report.robot_id}"
        + (f" since {when(report.filters.since)}" if report.filters.since else "")
        + (f" on stream {report.filters.stream}" if report.filters.stream else "")
        + f" (journal: {report.journal.rows} event(s), {size(report.journal.bytes)})"
    )
    out.extend(_event_line(e) for e in report.events)
    if report.open_alerts:
        out.append(f"open now: {len(report.open_alerts)} (robotpm-agent alerts --open)")
    return "\n".join(out) + "\n"


def explain_text(report: ExplainReport) -> str:
    """``robotpm-agent explain``."""
    out = [
        f"alert {report.alert_id} on {report.robot_id} stream {report.stream}: "
        f"{report.component}/{report.failure_mode} — {report.state}",
    ]
    if report.meaning:
        out.append(f"  score means: {report.meaning} ({report.direction.replace('_', ' ')})")
    out.append(f"  model: {report.model_label}")
    if report.shelved_by is not None:
        out.append(f"  now {shelf_line(report.shelved_by)}")
    out.append("life cycle:")
    out.extend("  " + _event_line(e, short=False) for e in report.life_cycle)
    t = report.thresholds
    severity = report.severity or "none"
    out.append(
        f"score of event {report.event_id[:12]}: {report.score:.4g} ({severity}), "
        f"compared with {report.threshold:g}"
    )
    if t is not None:
        out.append(f"  thresholds: warning {t.warning:g}, critical {t.critical:g}, clear {t.clear:g}")
    if report.sparkline:
        first, last = report.scores[0], report.scores[-1]
        out.append(f"scores, windows {first.window}–{last.window}:")
        out.append(f"  {report.sparkline}")
    out.append("features (z = (value − training mean) / training std; * = published as top feature):")
    for f in report.features[:20]:
        mean = "" if f.mean is None else f"  mean {f.mean:.4g} ± {f.std:.4g}"
        out.append(f"  {'*' if f.top else ' '} {f.name:<28} {f.value:>12.5g}  z {f.z:>+9.3f}{mean}")
    if len(report.features) > 20:
        out.append(f"  … {len(report.features) - 20} more (--json shows all)")
    if report.contributors:
        out.append("model contributions:")
        out.extend(f"  {c}" for c in report.contributors)
    src = report.source
    out.append(f"source: {src.file} bytes {src.byte_start}–{src.byte_end}")
    if src.present:
        out.extend(f"  | {line}" for line in src.lines)
        if src.truncated:
            out.append("  | …")
    else:
        out.append(f"  ({src.note})")
    return "\n".join(out) + "\n"


def status_text(report: StatusReport) -> str:
    """``robotpm-agent status``."""
    agent = report.agent
    head = {"healthy": "running, healthy", "degraded": "running, DEGRADED", "not_running": "NOT RUNNING"}
    out = [f"robotpm-agent on {report.robot_id} (site {report.site}): {head[report.verdict]}"]
    out.extend(f"  ! {r}" for r in report.reasons)
    if agent is not None:
        age = "-" if report.status_age_s is None else f"{report.status_age_s:.0f} s ago"
        out.append(
            f"  agent {agent.agent_version}, pid {agent.pid}, up {seconds(agent.uptime_s)}, "
            f"status written {age}"
        )
        broker = agent.broker
        state = "connected" if broker.connected else "NOT connected"
        error = f" (last error: {broker.last_error})" if broker.last_error else ""
        out.append(f"broker {broker.host}:{broker.port}: {state}{error}")
        for s in agent.streams:
            lag = f"lag {size(s.lag_bytes)}, {seconds(s.lag_s)}"
            flag = f", DEGRADED: {s.degraded}" if s.degraded else ""
            out.append(
                f"stream {s.name}: {lag}, {s.files} file(s), {s.lines} lines, {s.windows} windows, "
                f"{s.alerts} alerts, {s.quarantined} quarantined{flag}"
            )
        o = agent.outbox
        out.append(f"outbox: {o.depth} waiting, oldest {seconds(o.oldest_age_s)}, {size(o.bytes)}")
        if o.dropped:
            out.append("  dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(o.dropped.items())))
        m = agent.model
        out.append(f"model: {m.label}")
        if m.candidate is not None:
            out.append(
                f"  candidate on probation: {m.candidate}, "
                f"{m.candidate_windows}/{m.candidate_windows_needed} windows"
            )
        if m.last_update is not None:
            u = m.last_update
            detail = f": {u.detail}" if u.detail else ""
            out.append(f"  last update: {u.state} {u.model or ''} at {when(u.at)}{detail}")
        out.append(f"drift: {agent.drift}")
    shelved = sum(1 for a in report.open_alerts if a.shelved_by is not None)
    out.append(f"alerts: {len(report.open_alerts)} open, {shelved} shelved")
    out.extend("  " + _open_line(a) for a in report.open_alerts)
    for shelf in report.shelves:
        out.append(f"  {shelf_line(shelf)}")
    if report.disk is not None:
        out.append(
            f"state disk {report.disk.path}: {size(report.disk.free_bytes)} free "
            f"of {size(report.disk.total_bytes)}"
        )
    return "\n".join(out) + "\n"


def shelve_text(report: ShelveReport) -> str:
    """``robotpm-agent shelve`` and ``unshelve``."""
    request = report.request
    if report.result is None:
        return (
            f"request {request.id} ({request.action}) queued: the agent did not answer; "
            "it applies the request when it runs\n"
        )
    result = report.result
    out = [f"{'ok' if result.ok else 'refused'}: {result.detail}"]
    out.extend(f"  {shelf_line(s)}" for s in result.shelves if request.action == "shelve")
    out.extend(f"  still: {shelf_line(s)}" for s in result.still_shelved_by)
    return "\n".join(out) + "\n"


def _event_line(view: JournalEventView, *, short: bool = True) -> str:
    e = view.event
    severity = e.severity or "-"
    withheld = "" if view.published else f"  [withheld: {view.shelf.kind if view.shelf else 'shelved'}]"
    ident = e.alert_id[:12] if short else e.event_id[:12]
    return (
        f"{when(e.emitted_at)}  {e.state:<8} {severity:<8} {e.stream} {e.component}/{e.failure_mode}  "
        f"score {e.score:.4g} vs {e.threshold:g}  window {e.window.index}  {'alert' if short else 'event'} "
        f"{ident}{' (replayed)' if e.replayed else ''}{withheld}"
    )


def _open_line(alert: OpenAlertView) -> str:
    shelved = (
        ""
        if alert.shelved_by is None
        else f"  [{alert.shelved_by.kind} until {when(alert.shelved_by.until)}]"
    )
    return (
        f"{alert.alert_id}  {alert.severity:<8} {alert.stream} {alert.component}/{alert.failure_mode}  "
        f"since {when(alert.since)}{shelved}"
    )
