"""The expiry policy: an expired running model is never silently replaced by an older one.

Real onnxruntime models from `tests.models`, the in-process daemon of `tests.test_daemon`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

from agent.config import AgentConfig
from tests.models import write_linear_model
from tests.test_daemon import Harness, make_config
from tests.test_model_probation import into_store, retained, statuses


def expiry_config(tmp_path: Path, on_expiry: Literal["keep_serving", "fall_back"]) -> AgentConfig:
    config = make_config(tmp_path)
    model = config.model.model_copy(update={"probation_windows": 10, "on_expiry": on_expiry})
    return config.model_copy(update={"model": model})


def expire(model_dir: Path) -> None:
    """Give the model's manifest an ``expires`` an hour ago (a new file renamed over the old one)."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["expires"] = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    staging = model_dir / ".manifest.json.new"
    staging.write_text(json.dumps(manifest))
    staging.rename(model_dir / "manifest.json")


def run_v2_then_expire_it(config: AgentConfig) -> Path:
    """A first run that starts on store model v2 (the newest; v1 bundled); then v2 expires."""
    v2 = into_store(config, "v2", lambda d: write_linear_model(d, version=2))
    with closing(Harness(config)) as first:
        assert 2 == first.daemon.slot.current.manifest.version
        first.settle(30)
    expire(v2)
    return v2


@contextmanager
def restarted_after_v2_expired(
    tmp_path: Path, on_expiry: Literal["keep_serving", "fall_back"]
) -> Iterator[Harness]:
    """The second start after `run_v2_then_expire_it`, settled so its status telemetry went out."""
    config = expiry_config(tmp_path, on_expiry)
    run_v2_then_expire_it(config)
    with closing(Harness(config)) as second:
        second.settle(30)  # status telemetry rides on the next checkpoint commit (1 s)
        yield second


def test_an_expired_running_model_keeps_serving_after_a_restart_and_says_so(tmp_path: Path) -> None:
    """keep_serving: the next start runs v2 again (not bundled v1), with an "expired" event and status."""
    with restarted_after_v2_expired(tmp_path, "keep_serving") as second:
        assert 2 == second.daemon.slot.current.manifest.version
        sent = statuses(second)
        expired = [s for s in sent if s["state"] == "expired"]
        assert 1 == len(expired)
        assert (2, False) == (expired[0]["model"]["version"], expired[0]["retain"])
        assert "keeps serving" in expired[0]["detail"]
        assert "on_expiry = keep_serving" in expired[0]["detail"]
        assert "expired at" in retained(second)[-1]["detail"]
        assert 2 == retained(second)[-1]["model"]["version"]
        assert not [s for s in sent if s["state"] == "rejected"]


def test_on_expiry_fall_back_serves_the_older_version_and_reports_the_expired_one(tmp_path: Path) -> None:
    """fall_back: bundled v1 serves after the restart, and v2's refusal names its expiry."""
    with restarted_after_v2_expired(tmp_path, "fall_back") as second:
        assert 1 == second.daemon.slot.current.manifest.version
        rejected = [s for s in statuses(second) if s["state"] == "rejected"]
        assert 1 == len(rejected)
        assert 2 == rejected[0]["model"]["version"]
        assert "expired at" in rejected[0]["detail"]
        assert "on_expiry = fall_back" in rejected[0]["detail"]
        assert [1] == [s["model"]["version"] for s in retained(second)]


def test_a_newer_model_that_has_expired_is_refused_and_reported_not_served(tmp_path: Path) -> None:
    """keep_serving keeps only the running version: an expired v3 arriving later is refused, v2 stays."""
    config = expiry_config(tmp_path, "keep_serving")
    into_store(config, "v2", lambda d: write_linear_model(d, version=2))
    with closing(Harness(config)) as harness:
        assert 2 == harness.daemon.slot.current.manifest.version

        def expired_v3(directory: Path) -> None:
            write_linear_model(directory, version=3)
            expire(directory)

        into_store(config, "v3", expired_v3)
        harness.settle_until(lambda: any(s["state"] == "rejected" for s in statuses(harness)))
        assert 2 == harness.daemon.slot.current.manifest.version
        assert harness.daemon.probation is None
        rejected = [s for s in statuses(harness) if s["state"] == "rejected"]
        assert "expired at" in rejected[0]["detail"]


def test_a_model_that_expires_while_running_keeps_serving_and_is_reported_once(tmp_path: Path) -> None:
    """v2 expires a few seconds after it went live: one "expired" event, v2 still scores."""
    config = expiry_config(tmp_path, "keep_serving")

    def soon_expiring_v2(directory: Path) -> None:
        write_linear_model(directory, version=2)
        manifest = json.loads((directory / "manifest.json").read_text())
        manifest["expires"] = (datetime.now(timezone.utc) + timedelta(seconds=8)).isoformat()
        (directory / "manifest.json").write_text(json.dumps(manifest))

    into_store(config, "v2", soon_expiring_v2)
    with closing(Harness(config)) as harness:
        assert 2 == harness.daemon.slot.current.manifest.version
        harness.settle_until(lambda: any(s["state"] == "expired" for s in statuses(harness)), timeout_s=60.0)
        harness.settle(30)
        assert 1 == len([s for s in statuses(harness) if s["state"] == "expired"])
        assert 2 == harness.daemon.slot.current.manifest.version
