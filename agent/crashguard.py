"""What the agent was doing when it last died, remembered on disk, so a repeatable cause is skipped.

A cause that kills or hangs the agent every time it is met (a model whose golden
test never ends, a stream whose read hangs the process in the kernel) would make
systemd restart it into the same death until the unit's start limit gives up. The
crash guard breaks that loop with three files in the state directory:

* ``inflight``, the breadcrumbs: one fixed-size slot per kind of work (``loop``: a
  stream being started or read; ``models``: a store model being loaded and
  golden-tested, on any thread), written in place through a memory map whenever
  the agent enters or leaves such a step. Not fsync'd: the page cache outlives the
  process, which is what matters; a slot names the boot it was written in, so a
  power cut or a reboot blames nothing.
* ``fatal.log``: `faulthandler` writes the Python stack there when the process
  gets a fatal signal (SIGSEGV, SIGABRT from systemd's watchdog, SIGBUS, …).
* ``skip.json``, the memory, written atomically (temporary file, fsync, rename,
  fsync of the directory): the components the agent died in, why, when, how often.

A component is blamed at the next start when its slot was still entered and either
the step had lasted ``hang_report_s`` (a monitor thread marks it ``stuck``; the
heartbeat reports it meanwhile) or the process died of a fatal signal. A SIGKILL
from outside during an ordinary step (an operator, an OOM kill elsewhere) blames
nothing. A blamed store model is refused until its files change; a blamed stream is
skipped, and tried again after 10 minutes, then twice as long after each further
death in it (at most a day), and forgotten once it works. Both are reported.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import mmap
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final, TypeVar

import structlog

from agent.atomicfile import write_atomically
from agent.contract.manifest import MANIFEST_FILE
from agent.ownfiles import move_aside, open_own, read_own

log = structlog.get_logger("robotpm.agent")
T = TypeVar("T")

BREADCRUMB_FILE: Final = "inflight"
FATAL_FILE: Final = "fatal.log"
MEMORY_FILE: Final = "skip.json"
SLOTS: Final = ("loop", "models")
_SLOT_BYTES: Final = 1024
STREAM_RETRY_S: Final = 600.0
STREAM_RETRY_MAX_S: Final = 86_400.0
_FATAL_MAX_BYTES: Final = 64 * 1024


def boot_id() -> str:
    """The id of the running boot of the machine (Linux), or "" where unknown."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def stream_component(name: str) -> str:
    """The crash guard's name of a stream."""
    return f"stream:{name}"


def model_component(directory: Path) -> str:
    """The crash guard's name of a store model (its directory)."""
    return f"model:{directory}"


class CrashGuard:
    """Breadcrumbs, the fatal-signal record and the memory of one state directory; see the module docstring.

    Build it, `open` it at start (before any model is loaded), `close` it at the end.
    `enter`/`leave` may be called from any thread, one step per slot at a time.
    """

    def __init__(self, state_dir: Path, *, hang_report_s: float = 10.0) -> None:
        self._dir = state_dir
        self._hang_s = hang_report_s
        self._boot = boot_id()
        self._lock = threading.Lock()
        self._map: mmap.mmap | None = None
        self._fd: int | None = None
        self._fatal: IO[bytes] | None = None  # open while faulthandler writes there (ours to disable)
        self._entered: dict[str, tuple[str, str, float]] = {}  # slot -> component, doing, monotonic since
        self._stuck: set[str] = set()
        self._memory: dict[str, dict[str, Any]] = {}
        self._monitor: threading.Thread | None = None
        self._stop = threading.Event()
        self.blamed: dict[str, str] = {}
        """Components blamed at this start for the last death, with the reason (for reports)."""

    # -- life cycle -------------------------------------------------------------------------------------

    def open(self, wall: float) -> None:
        """Blame what the last process died in, start the breadcrumbs and the fatal-signal record.

        Never raises: without a writable state directory the agent runs unguarded (logged).
        """
        self._memory = self._load_memory()
        last_words = self._read_breadcrumbs()
        fatal = self._read_fatal()
        for slot, crumb in last_words.items():
            component, doing = str(crumb.get("component", "")), str(crumb.get("doing", "working on it"))
            if not component or crumb.get("boot") != self._boot:
                continue
            how = "hung" if crumb.get("stuck") else "died of a fatal signal" if fatal else None
            if how is None:
                continue  # killed from outside during an ordinary step: not its fault
            reason = f"the agent {how} while {doing} (pid {crumb.get('pid')}, {slot} thread)"
            self._remember(component, reason, wall)
            self.blamed[component] = reason
            log.error(
                "crash_cause_remembered", component=component, reason=reason, fatal=fatal[:2000] or None
            )
        if fatal and not self.blamed:
            log.warning("previous_run_died", fatal=fatal[:2000])
        if self.blamed:
            self._save_memory()
        try:
            self._start_breadcrumbs()
            self._start_fatal_record()
        except OSError as exc:
            log.error("crash_guard_unavailable", state_dir=str(self._dir), error=str(exc))
        self._monitor = threading.Thread(target=self._watch, name="robotpm-crash-guard", daemon=True)
        self._monitor.start()

    def close(self) -> None:
        """Stop the monitor, clear the slots of finished steps, and close the files."""
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=2.0)
            self._monitor = None
        with self._lock:
            if self._map is not None:
                for index, slot in enumerate(SLOTS):
                    if slot not in self._entered:  # a step still running (a hung load) stays blamed
                        self._map[index * _SLOT_BYTES : (index + 1) * _SLOT_BYTES] = b" " * _SLOT_BYTES
                self._map.close()
                self._map = None
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        if self._fatal is not None:
            faulthandler.disable()
            self._fatal.close()
            self._fatal = None

    # -- breadcrumbs --------------------------------------------------------------------------------------

    def enter(self, slot: str, component: str, doing: str) -> None:
        """A step of `component` begins in `slot` (``doing``: e.g. "reading it")."""
        now = time.monotonic()
        with self._lock:
            self._entered[slot] = (component, doing, now)
            self._stuck.discard(slot)
            self._write(slot, {"component": component, "doing": doing})

    def guarded(self, slot: str, component: str, doing: str, step: Callable[[], T]) -> T:
        """Run `step` between `enter` and `leave`: a death inside it blames `component`."""
        self.enter(slot, component, doing)
        try:
            return step()
        finally:
            self.leave(slot)

    def leave(self, slot: str) -> None:
        """The step in `slot` ended (whatever its outcome)."""
        with self._lock:
            if self._entered.pop(slot, None) is not None:
                self._stuck.discard(slot)
                self._write(slot, None)

    def stuck(self) -> dict[str, str]:
        """Steps running longer than ``hang_report_s`` now: component -> what it has been doing, how long."""
        now = time.monotonic()
        with self._lock:
            return {
                component: f"{doing} for {now - since:.0f} s"
                for slot, (component, doing, since) in self._entered.items()
                if slot in self._stuck
            }

    # -- the memory ---------------------------------------------------------------------------------------

    def model_refusal(self, directory: Path) -> str | None:
        """Why the store model in `directory` must not be loaded (it killed the agent), or None.

        Forgotten once the model's files change.
        """
        component = model_component(directory)
        entry = self._memory.get(component)
        if entry is None:
            return None
        if entry.get("stamp") != _model_stamp(directory):
            self.forget(component)
            return None
        return str(entry["reason"])

    def stream_skip(self, name: str, wall: float) -> tuple[str, float] | None:
        """(why, how long from now) a stream is to be left alone, or None."""
        entry = self._memory.get(stream_component(name))
        if entry is None:
            return None
        count = int(entry.get("count", 1))
        delay = min(STREAM_RETRY_MAX_S, STREAM_RETRY_S * 2.0 ** min(count - 1, 20))
        remaining = min(
            delay, float(entry.get("last", wall)) + delay - wall
        )  # a clock step back: at most delay
        if remaining <= 0:
            return None
        return str(entry["reason"]), remaining

    def forget(self, component: str) -> None:
        """The component works again: stop skipping it."""
        if self._memory.pop(component, None) is not None:
            log.info("crash_cause_forgotten", component=component)
            self._save_memory()

    def remembered(self) -> dict[str, str]:
        """Every component the memory holds, with its reason."""
        return {component: str(entry.get("reason", "")) for component, entry in self._memory.items()}

    # -- internals --------------------------------------------------------------------------------------

    def _remember(self, component: str, reason: str, wall: float) -> None:
        entry = self._memory.get(component, {"first": wall, "count": 0})
        entry.update(reason=reason, last=wall, count=int(entry.get("count", 0)) + 1)
        if component.startswith("model:"):
            entry["stamp"] = _model_stamp(Path(component.removeprefix("model:")))
        self._memory[component] = entry

    def _load_memory(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(read_own(self._dir / MEMORY_FILE))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("crash_memory_unreadable", path=str(self._dir / MEMORY_FILE), error=str(exc))
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): dict(v) for k, v in data.items() if isinstance(v, dict) and "reason" in v}

    def _save_memory(self) -> None:
        path = self._dir / MEMORY_FILE
        try:
            write_atomically(path, json.dumps(self._memory, indent=1, sort_keys=True).encode(), 0o600)
        except OSError as exc:  # a full disk: remembered for this run only
            log.error("crash_memory_not_saved", path=str(path), error=str(exc))

    def _read_breadcrumbs(self) -> dict[str, dict[str, Any]]:
        try:
            raw = read_own(self._dir / BREADCRUMB_FILE, _SLOT_BYTES * len(SLOTS))
        except OSError:
            return {}
        out: dict[str, dict[str, Any]] = {}
        for index, slot in enumerate(SLOTS):
            text = raw[index * _SLOT_BYTES : (index + 1) * _SLOT_BYTES].strip(b" \x00\n")
            if not text:
                continue
            with contextlib.suppress(ValueError):
                crumb = json.loads(text)
                if isinstance(crumb, dict):
                    out[slot] = crumb
        return out

    def _read_fatal(self) -> str:
        try:
            return read_own(self._dir / FATAL_FILE, _FATAL_MAX_BYTES).decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def _start_breadcrumbs(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        size = _SLOT_BYTES * len(SLOTS)
        move_aside(self._dir / BREADCRUMB_FILE)  # a FIFO or device planted there: a regular file instead
        fd = open_own(self._dir / BREADCRUMB_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)
                os.pwrite(fd, b" " * size, 0)  # allocate now: later writes need no space
            self._map = mmap.mmap(fd, size)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        self._map[:] = b" " * size

    def _start_fatal_record(self) -> None:
        move_aside(self._dir / FATAL_FILE)
        fd = open_own(self._dir / FATAL_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        record = os.fdopen(fd, "wb")  # emptied: it speaks of this run only
        if faulthandler.is_enabled():  # someone else's (PYTHONFAULTHANDLER, a test runner): leave it
            record.close()
            return
        self._fatal = record
        faulthandler.enable(file=record, all_threads=True)

    def _write(self, slot: str, crumb: dict[str, Any] | None) -> None:
        if self._map is None:
            return
        index = SLOTS.index(slot)
        data = b""
        if crumb is not None:
            crumb = {**crumb, "pid": os.getpid(), "boot": self._boot, "stuck": slot in self._stuck}
            data = json.dumps(crumb, separators=(",", ":")).encode()[: _SLOT_BYTES - 1]
        self._map[index * _SLOT_BYTES : (index + 1) * _SLOT_BYTES] = data.ljust(_SLOT_BYTES)

    def _watch(self) -> None:
        """Mark steps that last longer than ``hang_report_s`` as stuck (the loop cannot, being stuck)."""
        while not self._stop.wait(min(1.0, self._hang_s / 4)):
            now = time.monotonic()
            with self._lock:
                for slot, (component, doing, since) in list(self._entered.items()):
                    if slot not in self._stuck and now - since >= self._hang_s:
                        self._stuck.add(slot)
                        self._write(slot, {"component": component, "doing": doing})
                        log.error(
                            "step_stuck", component=component, doing=doing, seconds=round(now - since, 1)
                        )


class GuardedLoads:
    """The crash guard as the model slot sees it: an `agent.seams.LoadGuard`."""

    def __init__(self, guard: CrashGuard) -> None:
        self._guard = guard

    def before_load(self, directory: Path) -> str | None:
        """Refuse a store model that killed the agent; else note that it is being loaded."""
        refusal = self._guard.model_refusal(directory)
        if refusal is None:
            self._guard.enter("models", model_component(directory), f"loading the model in {directory}")
        return refusal

    def after_load(self, directory: Path) -> None:
        """The load ended (loaded or refused)."""
        self._guard.leave("models")


def _model_stamp(directory: Path) -> str:
    try:
        st = (directory / MANIFEST_FILE).stat()
    except OSError:
        return ""
    return f"{st.st_mtime_ns}:{st.st_size}"
