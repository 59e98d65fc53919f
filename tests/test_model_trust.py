"""The edges of trust: signed documents read strictly, keys and certificates that must not pass,
revocations that travel in bundles, and what the parent makes of every way a probe child can end.
"""

from __future__ import annotations

import base64
import shutil
import signal
from pathlib import Path

import pytest

from agent.contract.errors import ConfigError, SignatureFormatError
from agent.contract.signatures import MAGIC, REVOCATIONS_FILE, SignedDocument, signing_input
from agent.errors import FetchRefusedError, ModelRejectedError
from agent.models.install import BundleInstaller
from agent.models.keys import Keyring
from agent.models.probe import ProbeLimits, _verdict
from agent.models.store import ModelStore
from agent.models.verify import ModelVerifier
from tests.models import write_linear_model
from tests.signing_keys import FleetKeys, fleet_keys, release_key
from tests.test_model_fetch import signed_version
from trainer.publish import write_bundle
from trainer.signing import (
    ReleaseSigner,
    SigningError,
    certify_release_key,
    generate_key_pair,
    load_private_key,
    read_revocations,
    sign_document,
    sign_model_dir,
    write_revocations,
)

SIG = base64.b64encode(b"\0" * 64).decode()


@pytest.fixture(name="keys")
def _keys(tmp_path: Path) -> FleetKeys:
    return fleet_keys(tmp_path / "keys")


class TestSignedDocumentForm:
    @pytest.mark.parametrize(
        ("text", "problem"),
        [
            ("{}", "not a signed document"),
            ("robotpm-signed 1\npurpose manifest\nkey k\nsignature " + SIG, "no end of header"),
            (f"robotpm-signed 1\nkey k\npurpose manifest\nsignature {SIG}\n\n", "unexpected header line"),
            (f"robotpm-signed 1\npurpose manifest\npurpose manifest\nsignature {SIG}\n\n", "unexpected"),
            ("robotpm-signed 1\npurpose manifest\nkey k\n\n", "header lacks 'signature'"),
            (f"robotpm-signed 1\npurpose evil\nkey k\nsignature {SIG}\n\n", "unknown purpose 'evil'"),
            (f"robotpm-signed 1\npurpose manifest\nkey ../k\nsignature {SIG}\n\n", "does not match"),
            ("robotpm-signed 1\npurpose manifest\nkey k\nsignature !!\n\n", "signature is not base64"),
            ("robotpm-signed 1\npurpose manifest\nkey k\nsignature AAAA\n\n", "is 3 bytes, not 64"),
            (
                f"robotpm-signed 1\npurpose manifest\nkey k\nsignature {SIG}\ncertificate QUFB\n\n",
                "not a signed",
            ),
        ],
        ids=[
            "json",
            "no_end",
            "out_of_order",
            "twice",
            "missing_signature",
            "unknown_purpose",
            "bad_key_id",
            "bad_base64",
            "short_signature",
            "certificate_garbage",
        ],
    )
    def test_a_malformed_header_is_refused_naming_what_is_wrong(self, text: str, problem: str) -> None:
        with pytest.raises(SignatureFormatError, match=problem):
            SignedDocument.parse(text.encode(), max_bytes=1 << 16)

    def test_a_certificate_is_one_level_deep_and_of_the_release_key_purpose(self) -> None:
        inner = SignedDocument("announcement", "k", b"\0" * 64, b"{}")
        wrong = SignedDocument("manifest", "k", b"\0" * 64, b"", inner)
        with pytest.raises(SignatureFormatError, match="the certificate is a 'announcement' document"):
            SignedDocument.parse(wrong.to_bytes(), max_bytes=1 << 16)
        nested = SignedDocument(
            "release-key", "k", b"\0" * 64, b"{}", SignedDocument("release-key", "r", b"\0" * 64, b"")
        )
        outer = SignedDocument("manifest", "k", b"\0" * 64, b"", nested)
        with pytest.raises(SignatureFormatError, match="may not carry a certificate"):
            SignedDocument.parse(outer.to_bytes(), max_bytes=1 << 16)

    def test_a_document_over_its_cap_is_refused_unread(self) -> None:
        with pytest.raises(SignatureFormatError, match="over the cap of 100"):
            SignedDocument.parse(MAGIC + b"\n" + b"x" * 200, max_bytes=100)

    def test_a_document_round_trips_and_its_purpose_is_part_of_what_is_signed(self) -> None:
        document = SignedDocument("announcement", "fleet", b"\1" * 64, b'{"a": 1}')
        assert document == SignedDocument.parse(document.to_bytes(), max_bytes=1 << 16)
        assert signing_input("announcement", b"x") != signing_input("manifest", b"x")


class TestKeysThatMustNotPass:
    def test_a_signature_of_another_purpose_is_refused(self, tmp_path: Path, keys: FleetKeys) -> None:
        """A release key's announcement signature moved onto a manifest is not a manifest signature."""
        write_linear_model(tmp_path / "m", version=2)
        sign_model_dir(tmp_path / "m", keys.private)
        signer = ReleaseSigner(keys.private)
        data = (tmp_path / "m" / "manifest.json").read_bytes()
        moved = signer.sign("announcement", data, detached=True)
        (tmp_path / "m" / "manifest.sig").write_bytes(moved.to_bytes())
        with pytest.raises(ModelRejectedError, match="a 'announcement' signature, not a 'manifest' one"):
            ModelVerifier(Keyring.load(keys.trusted)).admit(tmp_path / "m")

    def test_a_certificate_for_another_key_id_is_refused(self, tmp_path: Path, keys: FleetKeys) -> None:
        other, _ = release_key(tmp_path / "keys", keys.root_private, "other")
        write_linear_model(tmp_path / "m", version=2)
        sign_model_dir(tmp_path / "m", keys.private)
        document = SignedDocument.parse((tmp_path / "m" / "manifest.sig").read_bytes(), max_bytes=1 << 16)
        other_cert = SignedDocument.parse(other.with_suffix(".cert").read_bytes(), max_bytes=1 << 16)
        swapped = SignedDocument(document.purpose, document.key_id, document.signature, b"", other_cert)
        (tmp_path / "m" / "manifest.sig").write_bytes(swapped.to_bytes())
        with pytest.raises(ModelRejectedError, match="signed by key 'fleet' with the certificate of 'other'"):
            ModelVerifier(Keyring.load(keys.trusted)).admit(tmp_path / "m")

    def test_a_key_directory_with_a_bad_file_name_or_an_unverifiable_revocation_list_is_a_config_error(
        self, tmp_path: Path, keys: FleetKeys
    ) -> None:
        (keys.trusted / "bad id.pub").write_bytes((keys.trusted / "root.pub").read_bytes())
        with pytest.raises(ConfigError, match="does not match"):
            Keyring.load(keys.trusted)
        (keys.trusted / "bad id.pub").unlink()
        (keys.trusted / REVOCATIONS_FILE).write_bytes(b"robotpm-signed 1\ngarbage\n\n")
        with pytest.raises(ConfigError, match="unexpected header line"):
            Keyring.load(keys.trusted)

    def test_a_revocation_list_in_the_state_file_by_a_root_no_longer_trusted_is_ignored(
        self, tmp_path: Path, keys: FleetKeys
    ) -> None:
        stranger = fleet_keys(tmp_path / "stranger", root_id="stranger-root")
        state = tmp_path / "state.signed"
        write_revocations(stranger.root_private, ["fleet"], version=5, out=state)
        assert Keyring.load(keys.trusted, state).revocations is None

    def test_documents_that_are_not_revocation_lists_are_refused_as_such(
        self, tmp_path: Path, keys: FleetKeys
    ) -> None:
        ring = Keyring.load(keys.trusted)
        with pytest.raises(ModelRejectedError, match="not a root-signed revocation list"):
            ring.accept_revocations(keys.certificate.read_bytes(), source="test")
        root = load_private_key(keys.root_private)
        junk = sign_document(root, "root", "revocations", b'{"version": 0}')
        with pytest.raises(ModelRejectedError, match="revocation list:"):
            ring.accept_revocations(junk.to_bytes(), source="test")
        with pytest.raises(ModelRejectedError, match="not a signed document"):
            ring.accept_revocations(b"{}", source="test")


class TestTheTrainerRefuses:
    def test_certify_refuses_a_past_expiry_and_a_bad_channel(self, tmp_path: Path, keys: FleetKeys) -> None:
        from datetime import datetime, timedelta, timezone

        _, public = generate_key_pair("next", tmp_path / "next")
        past = datetime.now(timezone.utc) - timedelta(days=1)
        with pytest.raises(SigningError, match="which is past"):
            certify_release_key(keys.root_private, public, channels=["stable"], expires=past)
        future = datetime.now(timezone.utc) + timedelta(days=1)
        with pytest.raises(SigningError, match="cannot certify next"):
            certify_release_key(keys.root_private, public, channels=["a/b"], expires=future)

    def test_a_release_signer_refuses_a_certificate_that_is_not_its_own(
        self, tmp_path: Path, keys: FleetKeys
    ) -> None:
        impostor, _ = generate_key_pair("fleet", tmp_path / "impostor")
        shutil.copy(keys.certificate, impostor.with_suffix(".cert"))
        with pytest.raises(SigningError, match="certifies another public key"):
            ReleaseSigner(impostor)
        other, _ = generate_key_pair("other", tmp_path / "other")
        shutil.copy(keys.certificate, other.with_suffix(".cert"))
        with pytest.raises(SigningError, match="certifies 'fleet', not 'other'"):
            ReleaseSigner(other)
        other.with_suffix(".cert").write_bytes(b"robotpm-signed 1\nbroken\n\n")
        with pytest.raises(SigningError, match="not a release-key certificate"):
            ReleaseSigner(other)
        write_revocations(keys.root_private, [], version=1, out=other.with_suffix(".cert"))
        with pytest.raises(SigningError, match="a 'revocations' document, not a certificate"):
            ReleaseSigner(other)

    def test_revoke_carries_earlier_ids_and_refuses_a_file_that_is_no_list(
        self, tmp_path: Path, keys: FleetKeys
    ) -> None:
        from trainer.cli import main as train_main

        first = tmp_path / "r1.signed"
        assert 0 == train_main(
            ["revoke", "--root", str(keys.root_private), "--key-id", "a", "--out", str(first)]
        )
        second = tmp_path / "r2.signed"
        argv = ["revoke", "--root", str(keys.root_private), "--key-id", "b", "--previous", str(first)]
        assert 0 == train_main([*argv, "--out", str(second)])
        assert (2, ("a", "b")) == (read_revocations(second).version, read_revocations(second).revoked_keys)
        with pytest.raises(SigningError, match="not a revocation list"):
            read_revocations(keys.certificate)


class TestRevocationsInBundles:
    def _installer(self, tmp_path: Path, keys: FleetKeys) -> BundleInstaller:
        store = ModelStore(tmp_path / "store")
        verifier = ModelVerifier(Keyring.load(keys.trusted, store.revocations_file))
        return BundleInstaller(store, verifier, max_bytes=1 << 20)

    def test_a_revocation_list_in_a_bundle_retires_its_key_for_every_later_bundle(
        self, tmp_path: Path, keys: FleetKeys
    ) -> None:
        """The trainer ships revocations with the next model: v2 installs, v3 by the revoked key does not."""
        leaked, _ = release_key(tmp_path / "keys", keys.root_private, "leaked")
        revocations = tmp_path / REVOCATIONS_FILE
        write_revocations(keys.root_private, ["leaked"], version=1, out=revocations)
        good = signed_version(tmp_path, keys, 2)
        bundle, _ = write_bundle(good, tmp_path / "web", revocations=revocations)
        installer = self._installer(tmp_path, keys)
        target, _ = installer.install(bundle)
        assert ["manifest.json", "manifest.sig", "model.onnx"] == sorted(p.name for p in target.iterdir())
        bad = tmp_path / "registry" / "v3"
        write_linear_model(bad, version=3)
        sign_model_dir(bad, leaked)
        with pytest.raises(FetchRefusedError, match="release key 'leaked' is revoked"):
            installer.install(write_bundle(bad, tmp_path / "web")[0])
        again = Keyring.load(keys.trusted, ModelStore(tmp_path / "store").revocations_file)
        assert again.revocations is not None, "kept in the store across a restart"

    def test_a_bundle_with_a_forged_revocation_list_is_refused(self, tmp_path: Path, keys: FleetKeys) -> None:
        stranger = fleet_keys(tmp_path / "stranger", root_id="stranger-root")
        forged = tmp_path / REVOCATIONS_FILE
        write_revocations(stranger.root_private, ["fleet"], version=99, out=forged)
        good = signed_version(tmp_path, keys, 2)
        bundle, _ = write_bundle(good, tmp_path / "web", revocations=forged)
        with pytest.raises(FetchRefusedError, match=r"bundle revocations\.signed"):
            self._installer(tmp_path, keys).install(bundle)
        assert [] == ModelStore(tmp_path / "store").entries()

    def test_a_bundle_not_newer_than_the_floor_or_for_another_channel_is_refused(
        self, tmp_path: Path, keys: FleetKeys
    ) -> None:
        good = signed_version(tmp_path, keys, 2)
        bundle, _ = write_bundle(good, tmp_path / "web")
        store = ModelStore(tmp_path / "store")
        verifier = ModelVerifier(Keyring.load(keys.trusted))
        with pytest.raises(FetchRefusedError, match="is for channel 'stable', not 'beta'"):
            BundleInstaller(store, verifier, max_bytes=1 << 20, channel="beta").install(bundle)
        store.recover()
        store.raise_floor(2)
        with pytest.raises(FetchRefusedError, match="not newer than the store's version floor 2"):
            BundleInstaller(store, verifier, max_bytes=1 << 20).install(bundle)


class TestProbeVerdicts:
    LIMITS = ProbeLimits(memory_bytes=1 << 20, cpu_s=3.0, timeout_s=9.0)

    @pytest.mark.parametrize(
        ("code", "out", "err", "reason", "model_fault"),
        [
            (0, b'{"ok": true, "reason": "", "peak_rss": 5}\n', b"", "", True),
            (0, b"not json", b"", "the model probe failed (exit 0): ", False),
            (-signal.SIGXCPU, b"", b"", "more than probe_cpu_s 3.0s of CPU", True),
            (-signal.SIGKILL, b"", b"", "was killed (out of memory?)", True),
            (-signal.SIGSEGV, b"", b"", "onnxruntime crashed on the model (SIGSEGV)", True),
            (1, b"", b"Traceback\nMemoryError", "needs more than probe_memory_bytes 1048576", True),
            (3, b"", b"boom", "the model probe failed (exit 3): boom", True),
        ],
        ids=["ok", "garbled", "cpu", "killed", "segfault", "memory", "exit"],
    )
    def test_every_way_the_child_ends_becomes_a_verdict_with_its_reason(
        self, code: int, out: bytes, err: bytes, reason: str, model_fault: bool
    ) -> None:
        verdict = _verdict(code, out, err, 1.5, self.LIMITS)
        assert reason in verdict.reason
        assert (verdict.ok, verdict.model_fault) == (code == 0 and out.startswith(b"{"), model_fault)
