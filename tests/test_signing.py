"""Signed models end to end: two tiers of real Ed25519 keys, real model directories, real onnxruntime.

A root key (the only key a robot trusts) certifies release keys; a release key signs
manifests (`trainer.signing`, ``robotpm-train keygen`` / ``certify-key`` / ``revoke`` /
``sign``). The agent verifies (`agent.models.keys`, `agent.models.verify`) before a store
model's manifest is parsed or its ONNX bytes read, and a refused model never replaces the one
serving.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.config import AgentConfig, ModelConfig, load_agent_config
from agent.contract.errors import ConfigError
from agent.contract.manifest import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, ModelManifest
from agent.contract.signatures import (
    REVOCATIONS_FILE,
    ReleaseKeyCertificate,
    SignedDocument,
    signing_input,
)
from agent.errors import ModelRejectedError
from agent.models.keys import Keyring
from agent.models.scorer import OnnxScorer
from agent.models.slot import ModelSlot
from agent.models.store import ModelStore
from agent.models.verify import ModelVerifier
from tests.agent_config import agent_config
from tests.models import write_linear_model
from tests.signing_keys import FleetKeys, fleet_keys, release_key
from tests.test_cli import run as run_agent_cli
from tests.test_daemon import PROFILE, Harness, lines, make_config, write
from trainer.cli import main as train_main
from trainer.signing import (
    SigningError,
    generate_key_pair,
    load_private_key,
    sign_document,
    sign_model_dir,
    write_revocations,
)

REPO = Path(__file__).resolve().parent.parent
PAST = datetime(2026, 1, 2, tzinfo=timezone.utc)
FUTURE = datetime.now(timezone.utc) + timedelta(days=365)


@dataclass(frozen=True)
class Keys:
    """The fleet's keys, and release keys that must not pass: each fails one rule."""

    fleet: FleetKeys
    stranger: Path
    """A release key certified by a root no robot trusts."""
    forged: Path
    """A release key whose "certificate" it signed itself, naming the fleet's root."""
    impostor: Path
    """Another key pair that claims the id 'fleet' and carries fleet's genuine certificate."""
    expired: Path
    """A release key whose certificate has expired."""
    revoked: Path
    """A release key the root-signed revocation list in trusted_keys revokes."""
    beta_only: Path
    """A release key certified for the channel 'beta' only."""

    @property
    def trusted(self) -> Path:
        return self.fleet.trusted

    @property
    def private(self) -> Path:
        return self.fleet.private


def _certificate_document(signer: Path, signer_id: str, key: Path, key_id: str, expires: datetime) -> bytes:
    """A release-key certificate for `key`'s public half, signed by `signer` as `signer_id`."""
    public = load_private_key(key).public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    body = ReleaseKeyCertificate(
        key_id=key_id,
        public_key=base64.b64encode(raw).decode(),
        channels=("*",),
        issued=PAST - timedelta(days=1),
        expires=expires,
    ).to_json()
    return sign_document(load_private_key(signer), signer_id, "release-key", body).to_bytes()


@pytest.fixture(name="keys")
def _keys(tmp_path: Path) -> Keys:
    fleet = fleet_keys(tmp_path / "fleet")
    stranger = fleet_keys(tmp_path / "stranger", root_id="stranger-root", key_id="stranger").private
    forged, _ = generate_key_pair("forged", tmp_path / "forged")
    (tmp_path / "forged" / "forged.cert").write_bytes(
        _certificate_document(forged, fleet.root_id, forged, "forged", FUTURE)
    )
    impostor, _ = generate_key_pair("fleet", tmp_path / "impostor")
    shutil.copy(fleet.certificate, tmp_path / "impostor" / "fleet.cert")
    expired, _ = generate_key_pair("fleet-2025", tmp_path / "expired")
    (tmp_path / "expired" / "fleet-2025.cert").write_bytes(
        _certificate_document(fleet.root_private, fleet.root_id, expired, "fleet-2025", PAST)
    )
    revoked, _ = release_key(tmp_path / "fleet", fleet.root_private, "leaked")
    write_revocations(fleet.root_private, ["leaked"], version=1, out=fleet.trusted / REVOCATIONS_FILE)
    beta_only, _ = release_key(tmp_path / "fleet", fleet.root_private, "beta-key", channels=("beta",))
    return Keys(fleet, stranger, forged, impostor, expired, revoked, beta_only)


def signed_model(directory: Path, keys: Keys, version: int, expires: datetime | None = None) -> Path:
    write_linear_model(directory, version=version)
    sign_model_dir(directory, keys.private, expires=expires)
    return directory


def slot_config(tmp_path: Path, keys: Keys | None) -> ModelConfig:
    write_linear_model(tmp_path / "bundled", version=1)
    return ModelConfig(
        directory=tmp_path / "store",
        bundled=tmp_path / "bundled",
        trusted_keys=keys.trusted if keys else None,
    )


def slot_refusing_an_unsigned_v2(tmp_path: Path, keys: Keys) -> ModelSlot:
    """A slot on v1 whose store got an unsigned v2, which its poll refused."""
    slot = ModelSlot(slot_config(tmp_path, keys))
    slot.load_initial()
    write_linear_model(tmp_path / "store" / "v2", version=2)
    assert slot.poll() is None
    return slot


def verifier(keys: Keys) -> ModelVerifier:
    return ModelVerifier(Keyring.load(keys.trusted))


# Each way a store model can fail the signature policy: how to make it, and the reason named.
def _unsigned(directory: Path, keys: Keys, version: int) -> None:
    write_linear_model(directory, version=version)


def forge_signature(directory: Path, private_key: Path, key_id: str, *, channel: str | None = None) -> None:
    """Sign a manifest as the trainer would, but without its checks (an attacker's or a stale key)."""
    manifest = ModelManifest.read(directory)
    update: dict[str, object] = {"signing_key_id": key_id, **({"channel": channel} if channel else {})}
    data = manifest.model_copy(update=update).to_json().encode()
    certificate = SignedDocument.parse(private_key.with_suffix(".cert").read_bytes(), max_bytes=1 << 16)
    signature = load_private_key(private_key).sign(signing_input("manifest", data))
    (directory / SIGNATURE_FILE).write_bytes(
        SignedDocument("manifest", key_id, signature, b"", certificate).to_bytes()
    )
    (directory / MANIFEST_FILE).write_bytes(data)


def _signed_by(key: Callable[[Keys], Path]) -> Callable[[Path, Keys, int], None]:
    def tamper(directory: Path, keys: Keys, version: int) -> None:
        write_linear_model(directory, version=version)
        private = key(keys)
        forge_signature(directory, private, private.stem)

    return tamper


def _signed_by_the_root_itself(directory: Path, keys: Keys, version: int) -> None:
    """The root key signs the manifest directly: it never signs models, so no certificate."""
    write_linear_model(directory, version=version)
    manifest = ModelManifest.read(directory).model_copy(update={"signing_key_id": keys.fleet.root_id})
    data = manifest.to_json().encode()
    root = load_private_key(keys.fleet.root_private)
    document = SignedDocument("manifest", keys.fleet.root_id, root.sign(signing_input("manifest", data)), b"")
    (directory / SIGNATURE_FILE).write_bytes(document.to_bytes())
    (directory / MANIFEST_FILE).write_bytes(data)


def _for_another_channel(directory: Path, keys: Keys, version: int) -> None:
    """A key certified for 'beta' signs a 'stable' manifest (the trainer would refuse to)."""
    write_linear_model(directory, version=version)
    forge_signature(directory, keys.beta_only, "beta-key", channel="stable")


def _manifest_edited(directory: Path, keys: Keys, version: int) -> None:
    signed_model(directory, keys, version)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest["heads"][0]["thresholds"]["critical"] = 99.0  # silence the alert: a plausible attack
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")


def _bit_flipped_in_the_model(directory: Path, keys: Keys, version: int) -> None:
    signed_model(directory, keys, version)
    data = bytearray((directory / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (directory / MODEL_FILE).write_bytes(bytes(data))


def _model_replaced(directory: Path, keys: Keys, version: int) -> None:
    signed_model(directory, keys, version)
    other = directory.parent / f".other-{version}"
    write_linear_model(other, version=version, scale=-3.0)
    shutil.copy(other / MODEL_FILE, directory / MODEL_FILE)
    shutil.rmtree(other)


def _expired(directory: Path, keys: Keys, version: int) -> None:
    signed_model(directory, keys, version, expires=PAST)


def _signature_truncated(directory: Path, keys: Keys, version: int) -> None:
    signed_model(directory, keys, version)
    (directory / SIGNATURE_FILE).write_bytes((directory / SIGNATURE_FILE).read_bytes()[:100])


def _single_tier_signature(directory: Path, keys: Keys, version: int) -> None:
    """The old format: 64 raw bytes by a key that trusted_keys would once have held."""
    signed_model(directory, keys, version)
    key = load_private_key(keys.private)
    (directory / SIGNATURE_FILE).write_bytes(key.sign((directory / MANIFEST_FILE).read_bytes()))


Tamper = Callable[[Path, Keys, int], None]
TAMPERED: list[tuple[Tamper, str]] = [
    (_unsigned, "no signature"),
    (_signed_by(lambda k: k.stranger), "not a trusted root key"),
    (_signed_by(lambda k: k.forged), "does not verify with root key"),
    (_signed_by(lambda k: k.impostor), "bad signature"),
    (_signed_by(lambda k: k.expired), "the certificate of release key 'fleet-2025' expired"),
    (_signed_by(lambda k: k.revoked), "release key 'leaked' is revoked"),
    (_signed_by_the_root_itself, "without a certificate from a root key"),
    (_for_another_channel, "may sign for channels ['beta'], not 'stable'"),
    (_manifest_edited, "bad signature"),
    (_bit_flipped_in_the_model, "sha256"),
    (_model_replaced, "sha256"),
    (_expired, "expired"),
    (_signature_truncated, "bad signature"),
    (_single_tier_signature, "not a signed document"),
]
_PARSED_FIRST = {"channel_outside_the_key_scope", "bit_flip", "model_replaced", "manifest_expired"}
TAMPERED_IDS = [
    "unsigned",
    "release_key_of_an_unknown_root",
    "release_key_not_signed_by_the_root",
    "wrong_key_with_a_genuine_certificate",
    "expired_release_key",
    "revoked_release_key",
    "signed_by_the_root_itself",
    "channel_outside_the_key_scope",
    "manifest_edited",
    "bit_flip",
    "model_replaced",
    "manifest_expired",
    "signature_truncated",
    "single_tier_signature",
]

# The cases whose signed manifest held: only the model bytes or the manifest's own expiry did not.
SIGNATURE_HELD = (_bit_flipped_in_the_model, _model_replaced, _expired)

# The cases refused before the manifest is parsed (the others need the parsed manifest to judge).
SIGNATURE_FAILS = [t for t, i in zip(TAMPERED, TAMPERED_IDS, strict=True) if i not in _PARSED_FIRST]
SIGNATURE_FAIL_IDS = [i for i in TAMPERED_IDS if i not in _PARSED_FIRST]


class TestKeyring:
    def test_every_pub_file_is_a_trusted_root_under_its_stem(self, tmp_path: Path) -> None:
        """Two .pub files make two root key ids; other files (a private key) are ignored."""
        generate_key_pair("a", tmp_path)
        generate_key_pair("b-2026", tmp_path)
        assert ("a", "b-2026") == Keyring.load(tmp_path).root_ids

    @pytest.mark.parametrize(
        ("setup", "problem"),
        [
            (lambda d: None, "no such directory"),
            (lambda d: d.mkdir(), "no root key <key_id>.pub"),
            (lambda d: (d.mkdir(), (d / "x.pub").write_text("hello")), "not a PEM public key"),
        ],
        ids=["missing", "empty", "garbage"],
    )
    def test_an_unusable_key_directory_is_a_config_error_naming_the_key(
        self, tmp_path: Path, setup: Callable[[Path], object], problem: str
    ) -> None:
        """A missing, empty or broken trusted_keys directory is a ConfigError, never 'no keys'."""
        directory = tmp_path / "trusted"
        setup(directory)
        with pytest.raises(ConfigError) as info:
            Keyring.load(directory)
        assert "agent.model.trusted_keys" == info.value.key
        assert problem in info.value.problem

    def test_a_public_key_of_another_algorithm_is_refused(self, tmp_path: Path) -> None:
        """An ECDSA P-256 public key in the directory is a config error naming Ed25519."""
        pem = (
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        (tmp_path / "p256.pub").write_bytes(pem)
        with pytest.raises(ConfigError, match="not an Ed25519 key"):
            Keyring.load(tmp_path)

    def test_a_revocation_list_not_signed_by_a_root_is_a_config_error(
        self, tmp_path: Path, keys: Keys
    ) -> None:
        """A revocations.signed in trusted_keys that a stranger signed stops the start, naming the file."""
        stranger_root = tmp_path / "stranger" / "offline" / "stranger-root.key"
        write_revocations(stranger_root, [], version=9, out=keys.trusted / REVOCATIONS_FILE)
        with pytest.raises(ConfigError, match="not a trusted root key"):
            Keyring.load(keys.trusted)

    def test_the_newest_revocation_list_wins_and_an_older_one_is_not_taken_back(
        self, tmp_path: Path, keys: Keys
    ) -> None:
        """v2 revoking 'fleet' replaces v1; replaying v1 (which did not) changes nothing; it is persisted."""
        state = tmp_path / "store" / ".revocations.signed"
        ring = Keyring.load(keys.trusted, state)
        newer, older = tmp_path / "v2.signed", tmp_path / "v1.signed"
        write_revocations(keys.fleet.root_private, ["leaked", "fleet"], version=2, out=newer)
        write_revocations(keys.fleet.root_private, [], version=1, out=older)
        assert ring.accept_revocations(newer.read_bytes(), source="test")
        assert not ring.accept_revocations(older.read_bytes(), source="test")
        assert ring.revocations is not None
        assert {"fleet", "leaked"} == set(ring.revocations.revoked_keys)
        again = Keyring.load(keys.trusted, state)  # a restart: the state file holds v2
        assert again.revocations is not None
        assert 2 == again.revocations.version
        signed_model(tmp_path / "m", keys, version=2)
        with pytest.raises(ModelRejectedError, match="release key 'fleet' is revoked"):
            ModelVerifier(again).admit(tmp_path / "m")

    def test_a_new_release_key_certified_by_the_root_is_accepted_without_touching_the_agent(
        self, tmp_path: Path, keys: Keys
    ) -> None:
        """Key rotation: 'fleet-2027' never reached the robot; its signature carries its certificate."""
        rotated, _ = release_key(tmp_path / "fleet", keys.fleet.root_private, "fleet-2027")
        write_linear_model(tmp_path / "m", version=2)
        sign_model_dir(tmp_path / "m", rotated)
        assert "fleet-2027" == verifier(keys).admit(tmp_path / "m").manifest.signing_key_id


class TestReload:
    def test_a_root_added_to_trusted_keys_is_trusted_after_reload_without_a_restart(
        self, tmp_path: Path, keys: Keys
    ) -> None:
        """A model of the 'stranger' root is refused; its root's .pub is added; reload_keys → offered."""
        slot = ModelSlot(slot_config(tmp_path, keys))
        slot.load_initial()
        write_linear_model(tmp_path / "build" / "v2", version=2)
        sign_model_dir(tmp_path / "build" / "v2", keys.stranger)
        os.rename(tmp_path / "build" / "v2", tmp_path / "store" / "v2")
        assert slot.poll() is None
        shutil.copy(tmp_path / "stranger" / "offline" / "stranger-root.pub", keys.trusted)
        assert slot.poll() is None, "the keys are read again only when asked"
        slot.reload_keys()
        candidate = slot.poll()
        assert candidate is not None
        assert 2 == candidate.manifest.version

    def test_sighup_with_a_new_trusted_keys_directory_admits_a_model_of_its_root_without_a_restart(
        self, tmp_path: Path, keys: Keys
    ) -> None:
        """A new root through SIGHUP, in the real agent process.

        v2 of the 'stranger' root is refused; the config is changed to name a directory with both
        roots, SIGHUP, and the same process verifies v2 and swaps it in.
        """
        import signal as signals

        from tests.agent_process import spawn_agent
        from tests.mosquitto import free_port

        (tmp_path / "logs").mkdir()
        write_linear_model(tmp_path / "bundled", version=1)
        both = tmp_path / "trusted-both"
        both.mkdir()
        shutil.copy(keys.trusted / "root.pub", both)
        shutil.copy(tmp_path / "stranger" / "offline" / "stranger-root.pub", both)
        config = tmp_path / "config.toml"

        def write_config(trusted: Path) -> None:
            text = agent_config(port=free_port(), model={"trusted_keys": trusted, "probation_windows": 0})
            (tmp_path / "config.new").write_text(text)
            (tmp_path / "config.new").replace(config)

        write_config(keys.trusted)
        write_linear_model(tmp_path / "build" / "v2", version=2)
        sign_model_dir(tmp_path / "build" / "v2", keys.stranger)
        (tmp_path / "store").mkdir()
        os.rename(tmp_path / "build" / "v2", tmp_path / "store" / "v2")
        output = tmp_path / "agent.out"
        process = spawn_agent(config, output)
        try:
            _wait_for_line(output, process, lambda e: "not a trusted root key" in str(e.get("reason")))
            write_config(both)
            process.send_signal(signals.SIGHUP)
            _wait_for_line(output, process, lambda e: e.get("event") == "trusted_keys_reloaded")
            _wait_for_line(output, process, lambda e: e.get("event") == "model_live" and "@2" in str(e))
        finally:
            process.terminate()
            process.wait(30)

    def test_one_reload_reaches_the_fetcher_as_well_as_the_slot(self, tmp_path: Path, keys: Keys) -> None:
        """The fetcher and the slot of one config share their keyring: a SIGHUP reload reaches both."""
        from agent.contract.announcement import ModelAnnouncement
        from agent.models.backoff import Backoff
        from agent.models.fetch import ModelFetcher
        from trainer.publish import announcement_payload
        from trainer.signing import ReleaseSigner

        config = slot_config(tmp_path, keys)
        slot = ModelSlot(config)
        fetcher = ModelFetcher(config, backoff=Backoff(0.01, 0.01))
        announcement = ModelAnnouncement(
            model_id="test-linear",
            version=2,
            channel="stable",
            url="https://127.0.0.1:9/test-linear-v2.tar",  # nothing listens: the fetch itself fails
            sha256="0" * 64,
            length=100,
            published_at=FUTURE,
        )
        payload = announcement_payload(announcement, ReleaseSigner(keys.stranger))
        refused = fetcher.process(payload)
        assert ("refused", True) == (refused.outcome, "not a trusted root key" in refused.detail)
        shutil.copy(tmp_path / "stranger" / "offline" / "stranger-root.pub", keys.trusted)
        slot.reload_keys()
        assert "failed" == fetcher.process(payload).outcome, "verified now; only the download fails"

    def test_a_root_removed_from_trusted_keys_no_longer_verifies_after_reload(
        self, tmp_path: Path, keys: Keys
    ) -> None:
        generate_key_pair("other-root", keys.trusted)  # so the directory is not left empty
        (keys.trusted / "other-root.key").unlink()
        ring = Keyring.load(keys.trusted)
        signed_model(tmp_path / "m", keys, version=2)
        ModelVerifier(ring).admit(tmp_path / "m")
        (keys.trusted / f"{keys.fleet.root_id}.pub").unlink()
        (keys.trusted / REVOCATIONS_FILE).unlink()  # the root signed it: it goes with the root
        ring.reload()
        with pytest.raises(ModelRejectedError, match="not a trusted root key"):
            ModelVerifier(ring).admit(tmp_path / "m")

    def test_a_reload_of_an_emptied_directory_keeps_the_keys_and_says_why(
        self, tmp_path: Path, keys: Keys
    ) -> None:
        ring = Keyring.load(keys.trusted)
        (keys.trusted / f"{keys.fleet.root_id}.pub").unlink()
        with pytest.raises(ConfigError, match="no root key"):
            ring.reload()
        signed_model(tmp_path / "m", keys, version=2)
        assert 2 == ModelVerifier(ring).admit(tmp_path / "m").manifest.version


class TestVerifiedLoading:
    def test_a_signed_model_loads_and_scores(self, tmp_path: Path, keys: Keys) -> None:
        """A model signed by a certified release key loads through the verifier and passes its golden test."""
        signed_model(tmp_path / "m", keys, version=2)
        scorer = OnnxScorer.load(tmp_path / "m", verifier=verifier(keys))
        scorer.check_golden()
        assert "fleet" == scorer.manifest.signing_key_id

    @pytest.mark.parametrize(("tamper", "reason"), TAMPERED, ids=TAMPERED_IDS)
    def test_a_model_failing_the_signature_policy_is_refused_naming_why(
        self, tmp_path: Path, keys: Keys, tamper: Tamper, reason: str
    ) -> None:
        tamper(tmp_path / "m", keys, 2)
        with pytest.raises(ModelRejectedError, match=reason.replace("[", r"\[").replace("]", r"\]")):
            OnnxScorer.load(tmp_path / "m", verifier=verifier(keys))

    @pytest.mark.parametrize(("tamper", "reason"), SIGNATURE_FAILS, ids=SIGNATURE_FAIL_IDS)
    def test_a_manifest_whose_signature_fails_is_never_parsed(
        self, tmp_path: Path, keys: Keys, tamper: Tamper, reason: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Neither JSON nor pydantic reads a manifest before its signature holds."""
        tamper(tmp_path / "m", keys, 2)
        parsed: list[object] = []
        monkeypatch.setattr(ModelManifest, "from_json", classmethod(lambda cls, *a, **k: parsed.append(a)))
        monkeypatch.setattr(json, "loads", lambda *a, **k: parsed.append(a))
        with pytest.raises(ModelRejectedError):
            verifier(keys).verify_manifest(tmp_path / "m")
        assert [] == parsed

    def test_the_signature_is_checked_before_the_model_bytes_are_read(
        self, tmp_path: Path, keys: Keys
    ) -> None:
        """An unsigned directory with garbage for a model is refused for its signature, not by onnxruntime."""
        write_linear_model(tmp_path / "m", version=2)
        (tmp_path / "m" / MODEL_FILE).write_bytes(b"\x00not onnx at all")
        with pytest.raises(ModelRejectedError, match="no signature"):
            OnnxScorer.load(tmp_path / "m", verifier=verifier(keys))

    def test_without_keys_unsigned_models_load_as_before(self, tmp_path: Path) -> None:
        write_linear_model(tmp_path / "m", version=2)
        assert 2 == OnnxScorer.load(tmp_path / "m", verifier=ModelVerifier(None)).manifest.version

    def test_expiry_applies_to_unsigned_models_too(self, tmp_path: Path, keys: Keys) -> None:
        """Without keys an expired manifest is still refused, and one expiring next year loads."""
        signed_model(tmp_path / "old", keys, version=2, expires=PAST)
        signed_model(tmp_path / "new", keys, version=3, expires=FUTURE)
        with pytest.raises(ModelRejectedError, match="expired"):
            OnnxScorer.load(tmp_path / "old", verifier=ModelVerifier(None))
        assert 3 == OnnxScorer.load(tmp_path / "new", verifier=ModelVerifier(None)).manifest.version


class TestModelSlotWithSignatures:
    @pytest.mark.parametrize(("tamper", "reason"), TAMPERED, ids=TAMPERED_IDS)
    def test_a_refused_newer_model_leaves_the_current_one_serving_and_logs_why(
        self, tmp_path: Path, keys: Keys, tamper: Tamper, reason: str
    ) -> None:
        """poll() offers nothing for a tampered version 2, logs the reason, and version 1 stays current."""
        slot = ModelSlot(slot_config(tmp_path, keys))
        slot.load_initial()
        tamper(tmp_path / "build" / "v2", keys, 2)
        os.rename(tmp_path / "build" / "v2", tmp_path / "store" / "v2")
        with structlog.testing.capture_logs() as logs:
            assert slot.poll() is None
        assert 1 == slot.current.manifest.version
        refusals = [e for e in logs if e["event"] == "model_refused"]
        assert 1 == len(refusals)
        assert reason in refusals[0]["reason"]
        if tamper in SIGNATURE_HELD:  # the floor is order, not freshness (docs/model-supply-chain.md)
            assert 2 == slot.store.floor, "a genuine version raises the floor, expired or with bad bytes"
        else:
            assert 0 == slot.store.floor, "a version whose signature fails never raises the floor"

    def test_a_signed_newer_model_is_offered_and_raises_the_floor(self, tmp_path: Path, keys: Keys) -> None:
        slot = ModelSlot(slot_config(tmp_path, keys))
        slot.load_initial()
        signed_model(tmp_path / "store" / "v2", keys, version=2)
        candidate = slot.poll()
        assert candidate is not None
        assert 2 == candidate.manifest.version
        assert 2 == ModelStore(tmp_path / "store").floor

    def test_a_model_refused_for_no_signature_is_offered_once_it_is_signed(
        self, tmp_path: Path, keys: Keys
    ) -> None:
        """The signature file is part of a model's fingerprint: signing a refused model retries it."""
        slot = slot_refusing_an_unsigned_v2(tmp_path, keys)
        sign_model_dir(tmp_path / "store" / "v2", keys.private)
        candidate = slot.poll()
        assert candidate is not None
        assert 2 == candidate.manifest.version

    def test_a_refusal_for_the_signature_names_no_unverified_manifest(
        self, tmp_path: Path, keys: Keys
    ) -> None:
        """The "rejected" status of an unsigned model carries its source only: its manifest is never read."""
        slot = slot_refusing_an_unsigned_v2(tmp_path, keys)
        (refusal,) = slot.take_refusals()
        assert (tmp_path / "store" / "v2", None) == (refusal.source, refusal.manifest)

    def test_the_bundled_model_needs_no_signature(self, tmp_path: Path, keys: Keys) -> None:
        assert 1 == ModelSlot(slot_config(tmp_path, keys)).load_initial().manifest.version

    def test_at_start_an_unsigned_newer_store_model_is_passed_over_for_a_signed_older_one(
        self, tmp_path: Path, keys: Keys
    ) -> None:
        config = slot_config(tmp_path, keys)
        signed_model(tmp_path / "store" / "a", keys, version=4)
        write_linear_model(tmp_path / "store" / "b", version=5)
        assert 4 == ModelSlot(config).load_initial().manifest.version

    def test_without_trusted_keys_an_unsigned_newer_model_is_offered_as_before(self, tmp_path: Path) -> None:
        slot = ModelSlot(slot_config(tmp_path, None))
        slot.load_initial()
        write_linear_model(tmp_path / "store" / "v2", version=2)
        candidate = slot.poll()
        assert candidate is not None
        assert 2 == candidate.manifest.version


class TestDaemon:
    def test_tampered_versions_are_refused_while_v1_scores_then_a_signed_v2_is_swapped_in(
        self, tmp_path: Path, keys: Keys
    ) -> None:
        """Versions 3 and up, each tampered one way, never serve; the signed version 2 below them does.

        Every version is built outside the watched store and renamed in whole, as the product
        expects: the watcher never sees a half-written or not-yet-tampered model.
        """
        base = make_config(tmp_path)
        config = base.model_copy(
            update={"model": base.model.model_copy(update={"trusted_keys": keys.trusted})}
        )
        assert isinstance(config, AgentConfig)
        with closing(Harness(config)) as harness:
            for i, (tamper, _) in enumerate(TAMPERED):
                tamper(tmp_path / "build" / f"t{i}", keys, 3 + i)
                os.rename(tmp_path / "build" / f"t{i}", config.model.directory / f"t{i}")
            harness.settle_until(lambda: len(_refused(harness)) >= len(TAMPERED), timeout_s=60)
            write(config, lines(0, PROFILE))
            harness.settle()
            assert harness.alerts(), "the fault raised alerts"
            assert {1} == {a["model"]["version"] for a in harness.alerts()}  # type: ignore[index]
            signed_model(tmp_path / "build" / "v2", keys, version=2)
            os.rename(tmp_path / "build" / "v2", config.model.directory / "v2")
            harness.settle_until(lambda: harness.daemon.slot.current.manifest.version == 2, timeout_s=60)
            write(config, lines(100, PROFILE))
            harness.settle()
            assert 2 == harness.alerts()[-1]["model"]["version"]  # type: ignore[index]
            assert {1, 2} == {a["model"]["version"] for a in harness.alerts()}  # type: ignore[index]


def _wait_for_line(
    output: Path, process: subprocess.Popen[bytes], match: Callable[[dict[str, object]], bool]
) -> None:
    """Wait (generously) for a JSON log line of the agent that `match` accepts."""
    deadline = time.monotonic() + 60
    while True:
        for line in output.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and match(event):
                return
        assert process.poll() is None, output.read_text()[-3000:]
        assert time.monotonic() < deadline, output.read_text()[-3000:]
        time.sleep(0.05)


def _refused(harness: Harness) -> set[str]:
    events = [json.loads(m.payload) for m in harness.transport.messages("model")]
    return {e["source"] for e in events if e.get("state") == "rejected" and e.get("source")}


class TestConfig:
    def _setup(self, tmp_path: Path, **model: str | bool | Path) -> Path:
        (tmp_path / "logs").mkdir()
        write_linear_model(tmp_path / "bundled")
        path = tmp_path / "config.toml"
        path.write_text(agent_config(port=1883, robot_id="r1", model=model))  # `check` does not connect
        return path

    def _check(self, config: Path) -> subprocess.CompletedProcess[str]:
        return run_agent_cli("check", "--config", str(config))

    def test_require_signature_without_trusted_keys_is_a_config_error_naming_the_key(
        self, tmp_path: Path
    ) -> None:
        path = self._setup(tmp_path, require_signature=True)
        with pytest.raises(ConfigError) as info:
            load_agent_config(path, environ={})
        assert "agent.model.trusted_keys" == info.value.key
        assert "require_signature" in info.value.problem

    def test_the_agent_cli_exits_2_when_signatures_are_required_without_keys(self, tmp_path: Path) -> None:
        result = self._check(self._setup(tmp_path, require_signature=True))
        assert 2 == result.returncode
        assert "agent.model.trusted_keys" in result.stderr
        assert "Traceback" not in result.stderr

    def test_the_agent_cli_exits_2_when_the_trusted_keys_directory_is_missing(self, tmp_path: Path) -> None:
        result = self._check(self._setup(tmp_path, trusted_keys="no-such-keys"))
        assert 2 == result.returncode
        assert "agent.model.trusted_keys" in result.stderr
        assert "no such directory" in result.stderr

    def test_the_agent_cli_checks_a_signed_store_model_with_require_signature(
        self, tmp_path: Path, keys: Keys
    ) -> None:
        path = self._setup(tmp_path, trusted_keys=keys.trusted, require_signature=True)
        signed_model(tmp_path / "store" / "v2", keys, version=2)
        result = self._check(path)
        assert 0 == result.returncode, result.stderr
        assert "model ok: test-linear@2" in result.stdout

    def test_an_agent_without_trusted_keys_never_imports_cryptography(self, tmp_path: Path) -> None:
        """Loading the daemon module and a model with signatures off leaves cryptography unimported."""
        write_linear_model(tmp_path / "bundled")
        code = (
            "import sys\nfrom pathlib import Path\nimport agent.daemon\n"
            "from agent.config import ModelConfig\nfrom agent.models.slot import ModelSlot\n"
            f"ModelSlot(ModelConfig(directory=Path({str(tmp_path / 'store')!r}), "
            f"bundled=Path({str(tmp_path / 'bundled')!r}))).load_initial()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cryptography'))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
        )
        assert "[]" == result.stdout.strip().splitlines()[-1]


class TestTrainerCli:
    def test_keygen_writes_an_owner_only_private_key_and_a_public_key(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert 0 == train_main(["keygen", "--key-id", "fleet-2026", "--out", str(tmp_path / "k")])
        private = tmp_path / "k" / "fleet-2026.key"
        public = tmp_path / "k" / "fleet-2026.pub"
        assert 0o600 == stat.S_IMODE(private.stat().st_mode)
        assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
        assert serialization.load_pem_public_key(public.read_bytes()) is not None
        assert "fleet-2026.pub" in capsys.readouterr().out

    def test_keygen_never_overwrites_a_key_and_refuses_a_bad_id(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert 0 == train_main(["keygen", "--key-id", "fleet", "--out", str(tmp_path)])
        before = (tmp_path / "fleet.key").read_bytes()
        assert 1 == train_main(["keygen", "--key-id", "fleet", "--out", str(tmp_path)])
        assert "already exists" in capsys.readouterr().err
        assert before == (tmp_path / "fleet.key").read_bytes()
        assert 1 == train_main(["keygen", "--key-id", "../evil", "--out", str(tmp_path)])
        assert "does not match" in capsys.readouterr().err

    def test_keygen_certify_revoke_and_sign_from_the_command_line_make_what_the_agent_accepts(
        self, tmp_path: Path
    ) -> None:
        """Real subprocesses: root and release key, certificate, signature → accepted; revoked → refused."""
        trainer = [sys.executable, "-m", "trainer.cli"]

        def run(*argv: str) -> str:
            return subprocess.run(
                [*trainer, *argv], cwd=REPO, check=True, capture_output=True, text=True
            ).stdout

        run("keygen", "--key-id", "root-2026", "--out", str(tmp_path / "offline"))
        run("keygen", "--key-id", "site-a", "--out", str(tmp_path / "keys"))
        out = run(
            "certify-key",
            "--root",
            str(tmp_path / "offline" / "root-2026.key"),
            "--key",
            str(tmp_path / "keys" / "site-a.pub"),
            "--channels",
            "stable",
            "--valid-days",
            "30",
        )
        assert "site-a may sign for stable" in out
        trusted = tmp_path / "trusted"
        trusted.mkdir()
        shutil.copy(tmp_path / "offline" / "root-2026.pub", trusted)
        write_linear_model(tmp_path / "store" / "v2", version=2)
        out = run("sign", str(tmp_path / "store" / "v2"), "--key", str(tmp_path / "keys" / "site-a.key"))
        assert "signed test-linear@2" in out
        write_linear_model(tmp_path / "bundled", version=1)
        config = ModelConfig(directory=tmp_path / "store", bundled=tmp_path / "bundled", trusted_keys=trusted)
        assert 2 == ModelSlot(config).load_initial().manifest.version
        out = run(
            "revoke",
            "--root",
            str(tmp_path / "offline" / "root-2026.key"),
            "--key-id",
            "site-a",
            "--out",
            str(trusted / REVOCATIONS_FILE),
        )
        assert "revocation list v1 of site-a" in out
        assert 1 == ModelSlot(config).load_initial().manifest.version

    def test_the_signature_is_over_the_exact_manifest_bytes_naming_the_key(
        self, tmp_path: Path, keys: Keys
    ) -> None:
        write_linear_model(tmp_path / "m", version=2)
        assert 0 == train_main(["sign", str(tmp_path / "m"), "--key", str(keys.private)])
        data = (tmp_path / "m" / MANIFEST_FILE).read_bytes()
        document = SignedDocument.parse((tmp_path / "m" / SIGNATURE_FILE).read_bytes(), max_bytes=1 << 16)
        assert ("manifest", "fleet", b"") == (document.purpose, document.key_id, document.body)
        key = load_private_key(keys.private).public_key()
        key.verify(document.signature, signing_input("manifest", data))  # raises if it does not verify
        assert "fleet" == json.loads(data)["signing_key_id"]

    def test_sign_with_expires_in_the_past_makes_a_model_the_agent_refuses(
        self, tmp_path: Path, keys: Keys
    ) -> None:
        write_linear_model(tmp_path / "m", version=2)
        assert 0 == train_main(
            ["sign", str(tmp_path / "m"), "--key", str(keys.private), "--expires", "2026-01-02"]
        )
        with pytest.raises(ModelRejectedError, match="expired at 2026-01-02T00:00:00"):
            OnnxScorer.load(tmp_path / "m", verifier=verifier(keys))

    def test_sign_with_valid_days_sets_an_expiry_that_far_ahead(self, tmp_path: Path, keys: Keys) -> None:
        write_linear_model(tmp_path / "m", version=2)
        assert 0 == train_main(
            ["sign", str(tmp_path / "m"), "--key", str(keys.private), "--valid-days", "30"]
        )
        manifest = OnnxScorer.load(tmp_path / "m", verifier=verifier(keys)).manifest
        assert manifest.expires is not None
        left = manifest.expires - datetime.now(timezone.utc)
        assert timedelta(days=29, hours=23) < left <= timedelta(days=30)

    def test_sign_refuses_a_directory_whose_model_does_not_match_its_manifest(
        self, tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]
    ) -> None:
        write_linear_model(tmp_path / "m", version=2)
        (tmp_path / "m" / MODEL_FILE).write_bytes(b"something else")
        before = (tmp_path / "m" / MANIFEST_FILE).read_bytes()
        assert 1 == train_main(["sign", str(tmp_path / "m"), "--key", str(keys.private)])
        assert "differ from the manifest" in capsys.readouterr().err
        assert before == (tmp_path / "m" / MANIFEST_FILE).read_bytes()
        assert not (tmp_path / "m" / SIGNATURE_FILE).exists()

    def test_sign_refuses_a_key_without_a_certificate_or_outside_its_channels(
        self, tmp_path: Path, keys: Keys
    ) -> None:
        """An uncertified key, and a key certified for 'beta' signing a 'stable' model, are refused."""
        write_linear_model(tmp_path / "m", version=2)
        bare, _ = generate_key_pair("bare", tmp_path / "bare")
        with pytest.raises(SigningError, match="certify-key"):
            sign_model_dir(tmp_path / "m", bare)
        with pytest.raises(SigningError, match="not 'stable'"):
            sign_model_dir(tmp_path / "m", keys.beta_only)
        assert not (tmp_path / "m" / SIGNATURE_FILE).exists()

    def test_sign_refuses_a_file_that_is_not_a_private_key(self, tmp_path: Path, keys: Keys) -> None:
        write_linear_model(tmp_path / "m", version=2)
        with pytest.raises(SigningError, match=r"root\.pub"):
            sign_model_dir(tmp_path / "m", keys.trusted / "root.pub")


class TestTrainingRunSigns:
    def test_a_training_run_with_sign_key_registers_a_version_the_agent_accepts(
        self, tmp_path: Path, keys: Keys
    ) -> None:
        from tests.fleets import small_fleet
        from tests.test_trainer import SMALL_CONFIG

        small_fleet(tmp_path, seed=7)
        config = tmp_path / "config.toml"
        config.write_text(SMALL_CONFIG)
        argv = ["--config", str(config), "--train-csv", str(tmp_path / "train"), "--test-csv"]
        argv += [str(tmp_path / "test"), "--out", str(tmp_path / "models"), "--no-report"]
        assert 0 == train_main([*argv, "--sign-key", str(keys.private)])
        scorer = OnnxScorer.load(tmp_path / "models" / "arm-test" / "1", verifier=verifier(keys))
        scorer.check_golden()
        assert "fleet" == scorer.manifest.signing_key_id
