"""The model store: nothing unverified enters it or moves its version floor; it stays small and consistent.

Real parts: an HTTPS server on 127.0.0.1, two-tier signing keys, the agent's fetcher, slot and
inbox on a real directory, fetches SIGKILLed (a real child process) at every install step.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import pytest
from onnx import TensorProto, helper
from structlog.testing import capture_logs

from agent.config import ModelConfig
from agent.contract.signatures import REVOCATIONS_FILE
from agent.models.inbox import Inbox
from agent.models.install import INSTALL_STEPS, BundleInstaller
from agent.models.keys import Keyring
from agent.models.slot import ModelSlot
from agent.models.store import Fingerprint, ModelStore
from agent.models.verify import ModelVerifier
from tests.model_server import (  # noqa: F401 (pytest fixtures: pki, webroot, https, keys)
    ModelServer,
    Pki,
    https_fixture,
    keys_fixture,
    pki_fixture,
    webroot_fixture,
)
from tests.models import write_linear_model
from tests.signing_keys import FleetKeys, fleet_keys, release_key
from tests.test_model_fetch import (
    announce_file,
    fetcher_for,
    model_config,
    published,
    resigned,
    signed_version,
    store_entries,
)
from trainer.publish import write_bundle
from trainer.signing import sign_model_dir, write_revocations

REPO = Path(__file__).resolve().parent.parent
FREEZE = 2**53
T = TypeVar("T")


def unsigned_bundle(tmp_path: Path, webroot: Path, version: int) -> Path:
    directory = tmp_path / "attacker" / f"v{version}"
    write_linear_model(directory, version=version)
    bundle, _ = write_bundle(directory, webroot)
    return bundle


def custom_domain_bundle(tmp_path: Path, webroot: Path, version: int) -> Path:
    """A bundle whose model uses a com.microsoft operator (onnxruntime would load it)."""
    directory = tmp_path / "custom" / f"v{version}"
    manifest = write_linear_model(directory, version=version)
    node = helper.make_node("FusedMatMul", ["features", "W"], ["score"], domain="com.microsoft")
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info(
                "features", TensorProto.FLOAT, [None, manifest.feature_spec.n_features]
            )
        ],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
    )
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    (directory / "model.onnx").write_bytes(data)
    updated = manifest.model_copy(update={"sha256": hashlib.sha256(data).hexdigest(), "length": len(data)})
    (directory / "manifest.json").write_text(updated.to_json())
    bundle, _ = write_bundle(directory, webroot)
    return bundle


def plain_announcement(bundle: Path, server: ModelServer, version: int) -> bytes:
    """An unsigned JSON announcement, as anyone with publish rights on the broker can send."""
    return announce_file(bundle, server, None, version=version)


class TestFreeze:
    def test_an_unsigned_announcement_of_version_2_53_cannot_freeze_the_robot(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: FleetKeys
    ) -> None:
        """The reproduced freeze: the fake 2^53 was installed and every genuine version ignored, for good.

        Now it is refused unread, the floor stays 0, and a genuine v3 is installed, also after a restart.
        """
        config = model_config(tmp_path, pki, keys)
        bogus = plain_announcement(unsigned_bundle(tmp_path, webroot, FREEZE), https, FREEZE)
        assert "refused" == fetcher_for(config).process(bogus).outcome
        assert 0 == sum(https.requests.values())
        assert 0 == ModelStore(config.directory).floor
        genuine = resigned(published(signed_version(tmp_path, keys, 3), https, webroot, keys), keys)
        assert "installed" == fetcher_for(config).process(genuine).outcome
        restarted = fetcher_for(config)
        assert "refused" == restarted.process(bogus).outcome
        later = published(signed_version(tmp_path, keys, 4), https, webroot, keys)
        assert "installed" == restarted.process(later).outcome
        assert ["v3", "v4"] == store_entries(config)
        assert 4 == ModelStore(config.directory).floor

    def test_an_unverified_version_in_the_store_does_not_raise_the_fetchers_floor(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: FleetKeys
    ) -> None:
        """A directory claiming 2^53, signed by a stranger's key, sits in the store: v3 still comes in."""
        config = model_config(tmp_path, pki, keys)
        write_linear_model(tmp_path / "bundled", version=1)
        stranger = fleet_keys(tmp_path / "stranger", root_id="stranger-root", key_id="stranger")
        write_linear_model(tmp_path / "drop" / "big", version=FREEZE)
        sign_model_dir(tmp_path / "drop" / "big", stranger.private)
        config.directory.mkdir(parents=True)
        os.rename(tmp_path / "drop" / "big", config.directory / "big")
        slot = ModelSlot(config)
        slot.load_initial()
        assert slot.poll() is None
        payload = published(signed_version(tmp_path, keys, 3), https, webroot, keys)
        result = fetcher_for(config).process(payload)
        assert "installed" == result.outcome, result.detail
        assert 3 == ModelStore(config.directory).floor

    def test_a_signed_but_expired_version_raises_the_floor_from_the_store_never_as_a_download(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: FleetKeys
    ) -> None:
        """The rule of docs/model-supply-chain.md "The version floor", both ways.

        Downloaded, an expired v3 is refused and deleted and the floor stays 0: nothing a refused
        download carried is kept. In the store its signature holds, so the floor becomes 3 (expiry
        is freshness, the version is order) and a genuine v2 is then refused as a rollback.
        """
        config = model_config(tmp_path, pki, keys)
        expired = tmp_path / "registry" / "v3"
        write_linear_model(expired, version=3)
        sign_model_dir(expired, keys.private, expires=datetime(2026, 1, 2, tzinfo=timezone.utc))
        result = fetcher_for(config).process(published(expired, https, webroot, keys))
        assert "refused" == result.outcome
        assert "expired" in result.detail
        assert [] == store_entries(config)
        assert 0 == ModelStore(config.directory).floor
        write_linear_model(tmp_path / "bundled", version=1)
        slot = ModelSlot(config)
        assert 1 == slot.load_initial().manifest.version
        config.directory.mkdir(parents=True, exist_ok=True)
        shutil.copytree(expired, tmp_path / "drop")
        os.rename(tmp_path / "drop", config.directory / "v3")
        assert slot.poll() is None, "expired: never offered"
        assert 3 == ModelStore(config.directory).floor
        result = fetcher_for(config).process(
            published(signed_version(tmp_path, keys, 2), https, webroot, keys)
        )
        assert ("ignored", "version 2 is not newer than 3") == (result.outcome, result.detail)

    def test_the_floor_is_written_atomically_and_a_damaged_one_is_no_floor(self, tmp_path: Path) -> None:
        store = ModelStore(tmp_path / "store")
        store.recover()
        assert store.raise_floor(5)
        assert not store.raise_floor(4)
        assert {"version": 5} == json.loads((tmp_path / "store" / ".floor.json").read_text())
        assert [".floor.json"] == sorted(p.name for p in (tmp_path / "store").iterdir())
        (tmp_path / "store" / ".floor.json").write_text('{"version": "9999')
        assert 0 == store.floor


class TestNothingPilesUp:
    def test_five_unsigned_announcements_leave_nothing_in_the_store(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: FleetKeys
    ) -> None:
        """The reproduced pile-up: five unsigned announcements left five directories; now none, unasked."""
        config = model_config(tmp_path, pki, keys)
        fetcher = fetcher_for(config)
        for version in range(3, 8):
            bundle = unsigned_bundle(tmp_path, webroot, version)
            assert "refused" == fetcher.process(plain_announcement(bundle, https, version)).outcome
        assert [] == store_entries(config)
        assert 0 == sum(https.requests.values())

    def test_downloads_refused_at_install_are_deleted(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki
    ) -> None:
        """Without keys, five bundles with a custom-domain operator are downloaded, refused and deleted."""
        config = model_config(tmp_path, pki, None)
        fetcher = fetcher_for(config)
        for version in range(3, 8):
            result = fetcher.process(
                plain_announcement(custom_domain_bundle(tmp_path, webroot, version), https, version)
            )
            assert "refused" == result.outcome
            assert "'com.microsoft' is not allowed" in result.detail
        assert [] == store_entries(config)
        assert 5 == sum(https.requests.values())

    def test_an_install_past_the_store_quota_waits_for_pruning(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: FleetKeys
    ) -> None:
        """Old versions fill the quota: the download fails (retried); once v4 is live, pruning makes room."""
        config = model_config(
            tmp_path,
            pki,
            keys,
            max_model_bytes=64 << 10,
            download_max_bytes=128 << 10,
            store_max_bytes=1 << 20,
        )
        for version in (1, 2, 3, 4):
            signed_model_in_store(tmp_path, keys, config, version, padding=255 << 10)
        payload = published(signed_version(tmp_path, keys, 5), https, webroot, keys)
        result = fetcher_for(config).process(payload)
        assert "failed" == result.outcome
        assert "store_max_bytes" in result.detail
        write_linear_model(tmp_path / "bundled", version=1)
        slot = ModelSlot(config)
        assert 4 == slot.load_initial().manifest.version
        assert [config.directory / "v1"] == slot.prune()
        result = fetcher_for(config).process(payload)
        assert "installed" == result.outcome, result.detail
        assert ["v2", "v3", "v4", "v5"] == store_entries(config)


def signed_model_in_store(
    tmp_path: Path, keys: FleetKeys, config: ModelConfig, version: int, padding: int = 0
) -> Path:
    """A signed version built outside the store and renamed in; `padding` bytes of other files beside it."""
    build = tmp_path / "build" / f"v{version}"
    write_linear_model(build, version=version)
    sign_model_dir(build, keys.private)
    if padding:
        (build / "report.bin").write_bytes(b"\0" * padding)
    config.directory.mkdir(parents=True, exist_ok=True)
    target = config.directory / f"v{version}"
    os.rename(build, target)
    return target


class TestPruning:
    def test_pruning_keeps_the_running_version_and_the_two_before_it(
        self, tmp_path: Path, pki: Pki, keys: FleetKeys
    ) -> None:
        """v1…v5 verified, v5 running, a v6 refused for its content: v1, v2 and v6 go; v3, v4, v5 stay."""
        config = model_config(tmp_path, pki, keys)
        write_linear_model(tmp_path / "bundled", version=1)
        for version in range(1, 6):
            signed_model_in_store(tmp_path, keys, config, version)
        broken = signed_model_in_store(tmp_path, keys, config, 6)
        (broken / "model.onnx").write_bytes((broken / "model.onnx").read_bytes() + b"\0")
        slot = ModelSlot(config)
        assert 5 == slot.load_initial().manifest.version
        assert slot.poll() is None
        removed = slot.prune()
        assert sorted(config.directory / n for n in ("v1", "v2", "v6")) == sorted(removed)
        assert ["v3", "v4", "v5"] == store_entries(config)
        assert 6 == ModelStore(config.directory).floor, "its signed manifest held: the floor stays"


_KILLER = """
import os, signal, sys
from pathlib import Path
from agent.config import ModelConfig
from agent.models.fetch import ModelFetcher
config = ModelConfig.model_validate_json(Path(sys.argv[1]).read_text())
step = sys.argv[2]
def on_step(name):
    if name == step:
        os.kill(os.getpid(), signal.SIGKILL)
print(ModelFetcher(config, on_step=on_step).process(Path(sys.argv[3]).read_bytes()).outcome)
"""


class TestCrashes:
    @pytest.mark.parametrize("step", ["downloading", "downloaded", *INSTALL_STEPS])
    def test_a_fetch_killed_at_each_install_step_leaves_a_consistent_store_that_converges(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: FleetKeys, step: str
    ) -> None:
        """SIGKILL at `step` leaves a store that is consistent and converges.

        Every version visible is complete and verified, the floor names no missing version,
        leftovers go at the next start, and the next fetch ends with v2 installed once.
        """
        config = model_config(tmp_path, pki, keys)
        write_linear_model(tmp_path / "bundled", version=1)
        payload_file = tmp_path / "announcement"
        payload_file.write_bytes(published(signed_version(tmp_path, keys), https, webroot, keys))
        config_file = tmp_path / "model-config.json"
        config_file.write_text(config.model_dump_json())
        child = subprocess.run(
            [sys.executable, "-c", _KILLER, str(config_file), step, str(payload_file)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert -signal.SIGKILL == child.returncode, child.stdout + child.stderr
        assert_consistent(config, keys)
        slot = ModelSlot(config)
        running = slot.load_initial().manifest.version
        assert running == (2 if step in ("installed", "committed") else 1)
        assert not [p for p in config.directory.iterdir() if p.name.startswith((".staging-", ".trash-"))]
        result = fetcher_for(config).process(payload_file.read_bytes())
        assert result.outcome in ("installed", "ignored"), result.detail
        assert ["v2"] == store_entries(config)
        assert 2 == ModelSlot(config).load_initial().manifest.version
        assert 2 == ModelStore(config.directory).floor


def assert_consistent(config: ModelConfig, keys: FleetKeys) -> None:
    store = ModelStore(config.directory)
    verifier = ModelVerifier(Keyring.load(keys.trusted))
    versions = [verifier.admit(entry).manifest.version for entry in store.entries()]
    assert store.floor <= max(versions, default=0)


def inbox_for(config: ModelConfig, keys: FleetKeys | None) -> Inbox:
    """The agent's inbox over ``config.inbox``, verifying with `keys` (none: unsigned accepted)."""
    verifier = (
        ModelVerifier(Keyring.load(keys.trusted, ModelStore(config.directory).revocations_file))
        if keys
        else ModelVerifier()
    )
    installer = BundleInstaller(ModelStore(config.directory), verifier, max_bytes=config.download_max_bytes)
    assert config.inbox is not None
    return Inbox(config.inbox, installer, verifier)


def stick_with_v2(tmp_path: Path, pki: Pki, keys: FleetKeys) -> tuple[Path, ModelConfig]:
    """A USB stick (the inbox) holding a signed v2 bundle, and the model config reading it."""
    stick = tmp_path / "usb"
    config = model_config(tmp_path, pki, keys, inbox=stick)
    write_bundle(signed_version(tmp_path, keys, 2), stick)
    return stick, config


class TestInbox:
    def test_a_signed_bundle_on_a_usb_stick_is_installed_and_a_tampered_one_leaves_nothing(
        self, tmp_path: Path, pki: Pki, keys: FleetKeys
    ) -> None:
        stick, config = stick_with_v2(tmp_path, pki, keys)
        tampered = unsigned_bundle(tmp_path, tmp_path / "attacker-web", 3)
        shutil.copy(tampered, stick / tampered.name)
        inbox = inbox_for(config, keys)
        results = {r.path.name: (r.outcome, r.detail) for r in inbox.scan()}
        assert ("installed", "test-linear@2 as v2") == results["test-linear-v2.tar"]
        assert ("refused", "no signature (manifest.sig is missing)") == results["test-linear-v3.tar"]
        assert ["v2"] == store_entries(config)
        assert [] == inbox.scan(), "an unchanged file is not looked at again"

    def test_a_revocation_list_on_the_stick_retires_a_key_at_once(
        self, tmp_path: Path, pki: Pki, keys: FleetKeys
    ) -> None:
        stick = tmp_path / "usb"
        config = model_config(tmp_path, pki, keys, inbox=stick)
        leaked, _ = release_key(tmp_path / "keys", keys.root_private, "leaked")
        write_revocations(keys.root_private, ["leaked"], version=1, out=stick / REVOCATIONS_FILE)
        version_dir = tmp_path / "registry" / "v2"
        write_linear_model(version_dir, version=2)
        sign_model_dir(version_dir, leaked)
        write_bundle(version_dir, stick)
        results = {r.path.name: r for r in inbox_for(config, keys).scan()}
        assert "installed" == results[REVOCATIONS_FILE].outcome
        assert "release key 'leaked' is revoked" in results["test-linear-v2.tar"].detail
        assert [] == store_entries(config)
        assert (
            Keyring.load(keys.trusted, ModelStore(config.directory).revocations_file).revocations is not None
        )

    def test_the_daemon_installs_from_its_inbox_and_swaps_the_model_in(
        self, tmp_path: Path, keys: FleetKeys
    ) -> None:
        from tests.test_daemon import Harness, make_config

        base = make_config(tmp_path)
        stick = tmp_path / "usb"
        stick.mkdir()
        model = base.model.model_copy(update={"trusted_keys": keys.trusted, "inbox": stick})
        with closing(Harness(base.model_copy(update={"model": model}))) as harness:
            write_bundle(signed_version(tmp_path, keys, 2), tmp_path / "staging-web")
            os.rename(tmp_path / "staging-web" / "test-linear-v2.tar", stick / "test-linear-v2.tar")
            harness.settle_until(lambda: harness.daemon.slot.current.manifest.version == 2, timeout_s=60)


def within(seconds: float, work: Callable[[], T]) -> T:
    """`work()`'s result, which must come within `seconds` (a blocking open would never return)."""
    done: list[T] = []
    worker = threading.Thread(target=lambda: done.append(work()), daemon=True)
    worker.start()
    worker.join(timeout=seconds)
    assert done, f"still blocked after {seconds} s"
    return done[0]


class TestNonRegularFiles:
    def test_fifos_in_the_inbox_are_refused_at_once_and_the_signed_bundle_beside_them_installed(
        self, tmp_path: Path, pki: Pki, keys: FleetKeys
    ) -> None:
        """A FIFO named like a bundle and one named revocations.signed: refused as fifos, not read."""
        stick, config = stick_with_v2(tmp_path, pki, keys)
        os.mkfifo(stick / "test-linear-v3.tar")
        os.mkfifo(stick / REVOCATIONS_FILE)
        inbox = inbox_for(config, keys)
        results = {r.path.name: (r.outcome, r.detail) for r in within(30, inbox.scan)}
        assert ("refused", "not a regular file but a fifo") == results["test-linear-v3.tar"]
        assert ("refused", "not a regular file but a fifo") == results[REVOCATIONS_FILE]
        assert ("installed", "test-linear@2 as v2") == results["test-linear-v2.tar"]

    def test_fifos_as_the_stores_floor_and_refusals_read_as_absent(self, tmp_path: Path) -> None:
        """.floor.json and .refused.json as FIFOs: floor 0, nothing refused, no wait; a refusal written
        then replaces the FIFO with a regular file that holds it.
        """
        store_dir = tmp_path / "store"
        store_dir.mkdir()
        os.mkfifo(store_dir / ".floor.json")
        os.mkfifo(store_dir / ".refused.json")
        store = ModelStore(store_dir)
        fingerprint = Fingerprint(store_dir / "v2", ((1, 2, 3),))
        assert 0 == within(10, lambda: store.floor)
        assert within(10, lambda: store.remembered_refusal(fingerprint)) is None
        within(10, lambda: store.remember_refusal(fingerprint, "golden test failed"))
        assert (store_dir / ".refused.json").is_file()
        assert "golden test failed" == store.remembered_refusal(fingerprint)

    def test_a_fifo_as_the_stored_revocation_list_is_ignored_with_a_warning(
        self, tmp_path: Path, keys: FleetKeys
    ) -> None:
        """The store's .revocations.signed a FIFO: the keyring loads without it, at once, and says so."""
        state_file = tmp_path / ".revocations.signed"
        os.mkfifo(state_file)
        with capture_logs() as logs:
            ring = within(10, lambda: Keyring.load(keys.trusted, state_file))
        assert ring.revocations is None
        assert ["revocations_state_ignored"] == [
            e["event"] for e in logs if e["event"] == "revocations_state_ignored"
        ]
