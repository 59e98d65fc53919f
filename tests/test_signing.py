"""Signed models end to end: real Ed25519 key pairs, real model directories, real onnxruntime loading.

The trainer signs (`trainer.signing`, ``robotpm-train keygen`` / ``sign``); the agent
verifies (`agent.models.verify`) before a store model's ONNX bytes are read, and a refused
model never replaces the one serving.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.config import AgentConfig, ModelConfig, load_agent_config
from agent.contract.errors import ConfigError
from agent.contract.manifest import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE
from agent.errors import ModelRejectedError
from agent.models.scorer import OnnxScorer
from agent.models.slot import ModelSlot
from agent.models.verify import ModelVerifier, TrustedKeys
from tests.agent_config import agent_config
from tests.models import write_linear_model
from tests.test_cli import run as run_agent_cli
from tests.test_daemon import PROFILE, Harness, lines, make_config, write
from trainer.cli import main as train_main
from trainer.signing import SigningError, generate_key_pair, sign_model_dir

REPO = Path(__file__).resolve().parent.parent
PAST = datetime(2026, 1, 2, tzinfo=timezone.utc)
FUTURE = datetime.now(timezone.utc) + timedelta(days=365)


@dataclass(frozen=True)
class Keys:
    """A trusted signing key, a stranger's key, and the agent's trusted-keys directory."""

    key_id: str
    private: Path
    trusted: Path
    stranger_id: str
    stranger_private: Path
    impostor_private: Path
    """A different key pair that claims the trusted key's id."""


@pytest.fixture(name="keys")
def _keys(tmp_path: Path) -> Keys:
    private, public = generate_key_pair("fleet", tmp_path / "keys")
    stranger, _ = generate_key_pair("stranger", tmp_path / "stranger-keys")
    impostor, _ = generate_key_pair("fleet", tmp_path / "impostor-keys")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(public, trusted / public.name)
    return Keys("fleet", private, trusted, "stranger", stranger, impostor)


def signed_model(directory: Path, keys: Keys, version: int, expires: datetime | None = None) -> Path:
    write_linear_model(directory, version=version)
    sign_model_dir(directory, keys.private, keys.key_id, expires=expires)
    return directory


def slot_config(tmp_path: Path, keys: Keys | None) -> ModelConfig:
    write_linear_model(tmp_path / "bundled", version=1)
    return ModelConfig(
        directory=tmp_path / "store",
        bundled=tmp_path / "bundled",
        trusted_keys=keys.trusted if keys else None,
    )


# Each way a store model can fail the signature policy: how to make it, and the reason named.
def _unsigned(directory: Path, keys: Keys, version: int) -> None:
    write_linear_model(directory, version=version)


def _unknown_key(directory: Path, keys: Keys, version: int) -> None:
    write_linear_model(directory, version=version)
    sign_model_dir(directory, keys.stranger_private, keys.stranger_id)


def _impostor_key(directory: Path, keys: Keys, version: int) -> None:
    write_linear_model(directory, version=version)
    sign_model_dir(directory, keys.impostor_private, keys.key_id)


def _manifest_edited(directory: Path, keys: Keys, version: int) -> None:
    signed_model(directory, keys, version)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest["heads"][0]["thresholds"]["critical"] = 99.0  # silence the alert: a plausible attack
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")


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
    (directory / SIGNATURE_FILE).write_bytes((directory / SIGNATURE_FILE).read_bytes()[:32])


Tamper = Callable[[Path, Keys, int], None]
TAMPERED: list[tuple[Tamper, str]] = [
    (_unsigned, "no signature"),
    (_unknown_key, "unknown key id 'stranger'"),
    (_impostor_key, "bad signature"),
    (_manifest_edited, "bad signature"),
    (_model_replaced, "sha256"),
    (_expired, "expired"),
    (_signature_truncated, "bad signature"),
]
TAMPERED_IDS = [tamper.__name__.lstrip("_") for tamper, _ in TAMPERED]


class TestTrustedKeys:
    def test_every_pub_file_is_trusted_under_its_stem(self, tmp_path: Path) -> None:
        """Two .pub files make two trusted key ids; other files (a private key) are ignored."""
        generate_key_pair("a", tmp_path)
        generate_key_pair("b-2026", tmp_path)
        assert ("a", "b-2026") == TrustedKeys.load(tmp_path).key_ids

    @pytest.mark.parametrize(
        ("setup", "problem"),
        [
            (lambda d: None, "no such directory"),
            (lambda d: d.mkdir(), "no <key_id>.pub file"),
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
            TrustedKeys.load(directory)
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
            TrustedKeys.load(tmp_path)


class TestVerifiedLoading:
    def test_a_signed_model_loads_and_scores(self, tmp_path: Path, keys: Keys) -> None:
        """A model signed by a trusted key loads through the verifier and passes its golden test."""
        signed_model(tmp_path / "m", keys, version=2)
        scorer = OnnxScorer.load(tmp_path / "m", verifier=ModelVerifier(TrustedKeys.load(keys.trusted)))
        scorer.check_golden()
        assert "fleet" == scorer.manifest.signing_key_id

    @pytest.mark.parametrize(("tamper", "reason"), TAMPERED, ids=TAMPERED_IDS)
    def test_a_model_failing_the_signature_policy_is_refused_naming_why(
        self, tmp_path: Path, keys: Keys, tamper: Tamper, reason: str
    ) -> None:
        """Unsigned, unknown key, wrong key, edited manifest, replaced model, expired: each says why."""
        tamper(tmp_path / "m", keys, 2)
        verifier = ModelVerifier(TrustedKeys.load(keys.trusted))
        with pytest.raises(ModelRejectedError, match=reason):
            OnnxScorer.load(tmp_path / "m", verifier=verifier)

    def test_the_signature_is_checked_before_the_model_bytes_are_read(
        self, tmp_path: Path, keys: Keys
    ) -> None:
        """An unsigned directory with garbage for a model is refused for its signature, not by onnxruntime."""
        write_linear_model(tmp_path / "m", version=2)
        (tmp_path / "m" / MODEL_FILE).write_bytes(b"\x00not onnx at all")
        with pytest.raises(ModelRejectedError, match="no signature"):
            OnnxScorer.load(tmp_path / "m", verifier=ModelVerifier(TrustedKeys.load(keys.trusted)))

    def test_without_keys_unsigned_models_load_as_before(self, tmp_path: Path) -> None:
        """With signatures off, an unsigned model loads through the verifier unchanged."""
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
        tamper(tmp_path / "store" / "v2", keys, 2)
        with structlog.testing.capture_logs() as logs:
            assert slot.poll() is None
        assert 1 == slot.current.manifest.version
        refusals = [e for e in logs if e["event"] == "model_refused"]
        assert 1 == len(refusals)
        assert reason in refusals[0]["reason"]

    def test_a_signed_newer_model_is_offered(self, tmp_path: Path, keys: Keys) -> None:
        """A version 2 signed by the trusted key is offered over the bundled version 1."""
        slot = ModelSlot(slot_config(tmp_path, keys))
        slot.load_initial()
        signed_model(tmp_path / "store" / "v2", keys, version=2)
        candidate = slot.poll()
        assert candidate is not None
        assert 2 == candidate.manifest.version

    def test_a_model_refused_for_no_signature_is_offered_once_it_is_signed(
        self, tmp_path: Path, keys: Keys
    ) -> None:
        """The signature file is part of a model's fingerprint: signing a refused model retries it."""
        slot = ModelSlot(slot_config(tmp_path, keys))
        slot.load_initial()
        write_linear_model(tmp_path / "store" / "v2", version=2)
        assert slot.poll() is None
        sign_model_dir(tmp_path / "store" / "v2", keys.private, keys.key_id)
        candidate = slot.poll()
        assert candidate is not None
        assert 2 == candidate.manifest.version

    def test_the_bundled_model_needs_no_signature(self, tmp_path: Path, keys: Keys) -> None:
        """With keys in force and an empty store, the unsigned bundled model still loads."""
        assert 1 == ModelSlot(slot_config(tmp_path, keys)).load_initial().manifest.version

    def test_at_start_an_unsigned_newer_store_model_is_passed_over_for_a_signed_older_one(
        self, tmp_path: Path, keys: Keys
    ) -> None:
        """The newest *signed* store version wins at start; an unsigned version 5 is skipped."""
        config = slot_config(tmp_path, keys)
        signed_model(tmp_path / "store" / "a", keys, version=4)
        write_linear_model(tmp_path / "store" / "b", version=5)
        assert 4 == ModelSlot(config).load_initial().manifest.version

    def test_without_trusted_keys_an_unsigned_newer_model_is_offered_as_before(self, tmp_path: Path) -> None:
        """Signature checks off: behaviour is unchanged, an unsigned version 2 is offered."""
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
        """Versions 3-9, each tampered one way, never serve; the signed version 2 below them does."""
        base = make_config(tmp_path)
        config = base.model_copy(
            update={"model": base.model.model_copy(update={"trusted_keys": keys.trusted})}
        )
        assert isinstance(config, AgentConfig)
        harness = Harness(config)
        try:
            for i, (tamper, _) in enumerate(TAMPERED):
                # built beside the store and renamed in, as a model must appear: the watcher must
                # never see the signed model before it is tampered with
                tamper(tmp_path / "staging" / f"t{i}", keys, 3 + i)
                (tmp_path / "staging" / f"t{i}").rename(config.model.directory / f"t{i}")
            time.sleep(0.5)  # the watcher checks the store every 10 ms: it has looked, and refused
            harness.settle(5)
            write(config, lines(0, PROFILE))
            harness.settle()
            assert harness.alerts(), "the fault raised alerts"
            assert {1} == {a["model"]["version"] for a in harness.alerts()}  # type: ignore[index]
            signed_model(config.model.directory / "v2", keys, version=2)
            harness.settle_until(lambda: harness.daemon.slot.current.manifest.version == 2)
            write(config, lines(100, PROFILE))
            harness.settle()
            assert 2 == harness.alerts()[-1]["model"]["version"]  # type: ignore[index]
            assert {1, 2} == {a["model"]["version"] for a in harness.alerts()}  # type: ignore[index]
        finally:
            harness.close()


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
        """require_signature = true alone is refused at load time, naming agent.model.trusted_keys."""
        path = self._setup(tmp_path, require_signature=True)
        with pytest.raises(ConfigError) as info:
            load_agent_config(path, environ={})
        assert "agent.model.trusted_keys" == info.value.key
        assert "require_signature" in info.value.problem

    def test_the_agent_cli_exits_2_when_signatures_are_required_without_keys(self, tmp_path: Path) -> None:
        """robotpm-agent check exits 2 and names the key on stderr, without a traceback."""
        result = self._check(self._setup(tmp_path, require_signature=True))
        assert 2 == result.returncode
        assert "agent.model.trusted_keys" in result.stderr
        assert "Traceback" not in result.stderr

    def test_the_agent_cli_exits_2_when_the_trusted_keys_directory_is_missing(self, tmp_path: Path) -> None:
        """A trusted_keys directory that does not exist is a configuration error, exit 2."""
        result = self._check(self._setup(tmp_path, trusted_keys="no-such-keys"))
        assert 2 == result.returncode
        assert "agent.model.trusted_keys" in result.stderr
        assert "no such directory" in result.stderr

    def test_the_agent_cli_checks_a_signed_store_model_with_require_signature(
        self, tmp_path: Path, keys: Keys
    ) -> None:
        """With keys and require_signature, check loads the signed store model, not the bundled one."""
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
        """The keygen command makes ID.key (PEM PKCS8, mode 0600) and ID.pub (PEM SubjectPublicKeyInfo)."""
        assert 0 == train_main(["keygen", "--key-id", "fleet-2026", "--out", str(tmp_path / "k")])
        private = tmp_path / "k" / "fleet-2026.key"
        public = tmp_path / "k" / "fleet-2026.pub"
        assert 0o600 == stat.S_IMODE(private.stat().st_mode)
        assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
        assert isinstance(serialization.load_pem_public_key(public.read_bytes()), Ed25519PublicKey)
        assert "fleet-2026.pub" in capsys.readouterr().out

    def test_keygen_never_overwrites_a_key_and_refuses_a_bad_id(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A second keygen for the same id, and an id with a slash, both exit 1 leaving the key intact."""
        assert 0 == train_main(["keygen", "--key-id", "fleet", "--out", str(tmp_path)])
        before = (tmp_path / "fleet.key").read_bytes()
        assert 1 == train_main(["keygen", "--key-id", "fleet", "--out", str(tmp_path)])
        assert "already exists" in capsys.readouterr().err
        assert before == (tmp_path / "fleet.key").read_bytes()
        assert 1 == train_main(["keygen", "--key-id", "../evil", "--out", str(tmp_path)])
        assert "does not match" in capsys.readouterr().err

    def test_keys_and_signatures_made_by_the_cli_are_accepted_by_the_agent(self, tmp_path: Path) -> None:
        """robotpm-train keygen + sign (real subprocesses) produce a store model the agent's slot offers."""
        trainer = [sys.executable, "-m", "trainer.cli"]
        keygen = [*trainer, "keygen", "--key-id", "site-a", "--out", str(tmp_path / "keys")]
        subprocess.run(keygen, cwd=REPO, check=True, capture_output=True)
        trusted = tmp_path / "trusted"
        trusted.mkdir()
        shutil.copy(tmp_path / "keys" / "site-a.pub", trusted)
        write_linear_model(tmp_path / "store" / "v2", version=2)
        sign = [
            *trainer,
            "sign",
            str(tmp_path / "store" / "v2"),
            "--key",
            str(tmp_path / "keys" / "site-a.key"),
        ]
        result = subprocess.run(sign, cwd=REPO, check=True, capture_output=True, text=True)
        assert "signed test-linear@2" in result.stdout
        write_linear_model(tmp_path / "bundled", version=1)
        config = ModelConfig(directory=tmp_path / "store", bundled=tmp_path / "bundled", trusted_keys=trusted)
        assert 2 == ModelSlot(config).load_initial().manifest.version

    def test_the_signature_is_over_the_exact_manifest_bytes_naming_the_key(self, tmp_path: Path) -> None:
        """manifest.sig verifies against manifest.json's bytes with the public key; the manifest names it."""
        private, public = generate_key_pair("k1", tmp_path / "keys")
        write_linear_model(tmp_path / "m", version=2)
        assert 0 == train_main(["sign", str(tmp_path / "m"), "--key", str(private), "--key-id", "k1"])
        data = (tmp_path / "m" / MANIFEST_FILE).read_bytes()
        key = serialization.load_pem_public_key(public.read_bytes())
        assert isinstance(key, Ed25519PublicKey)
        key.verify((tmp_path / "m" / SIGNATURE_FILE).read_bytes(), data)  # raises if it does not verify
        assert "k1" == json.loads(data)["signing_key_id"]

    def test_sign_with_expires_in_the_past_makes_a_model_the_agent_refuses(
        self, tmp_path: Path, keys: Keys
    ) -> None:
        """--expires writes the expiry into the signed manifest; a past one is refused as expired."""
        write_linear_model(tmp_path / "m", version=2)
        assert 0 == train_main(
            ["sign", str(tmp_path / "m"), "--key", str(keys.private), "--expires", "2026-01-02"]
        )
        verifier = ModelVerifier(TrustedKeys.load(keys.trusted))
        with pytest.raises(ModelRejectedError, match="expired at 2026-01-02T00:00:00"):
            OnnxScorer.load(tmp_path / "m", verifier=verifier)

    def test_sign_with_valid_days_sets_an_expiry_that_far_ahead(self, tmp_path: Path, keys: Keys) -> None:
        """--valid-days 30 expires 30 days from now, and the agent accepts it today."""
        write_linear_model(tmp_path / "m", version=2)
        assert 0 == train_main(
            ["sign", str(tmp_path / "m"), "--key", str(keys.private), "--valid-days", "30"]
        )
        manifest = OnnxScorer.load(
            tmp_path / "m", verifier=ModelVerifier(TrustedKeys.load(keys.trusted))
        ).manifest
        assert manifest.expires is not None
        left = manifest.expires - datetime.now(timezone.utc)
        assert timedelta(days=29, hours=23) < left <= timedelta(days=30)

    def test_sign_refuses_a_directory_whose_model_does_not_match_its_manifest(
        self, tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A signature never vouches for a model its manifest does not describe: exit 1, nothing written."""
        write_linear_model(tmp_path / "m", version=2)
        (tmp_path / "m" / MODEL_FILE).write_bytes(b"something else")
        before = (tmp_path / "m" / MANIFEST_FILE).read_bytes()
        assert 1 == train_main(["sign", str(tmp_path / "m"), "--key", str(keys.private)])
        assert "differ from the manifest" in capsys.readouterr().err
        assert before == (tmp_path / "m" / MANIFEST_FILE).read_bytes()
        assert not (tmp_path / "m" / SIGNATURE_FILE).exists()

    def test_sign_refuses_a_file_that_is_not_a_private_key(self, tmp_path: Path, keys: Keys) -> None:
        """Passing the public key by mistake is a SigningError naming the file."""
        write_linear_model(tmp_path / "m", version=2)
        with pytest.raises(SigningError, match=r"fleet\.pub"):
            sign_model_dir(tmp_path / "m", keys.trusted / "fleet.pub", "fleet")


class TestTrainingRunSigns:
    def test_a_training_run_with_sign_key_registers_a_version_the_agent_accepts(
        self, tmp_path: Path, keys: Keys
    ) -> None:
        """robotpm-train --sign-key signs the version it registers; the verifier accepts it as is."""
        from tests.fleets import small_fleet
        from tests.test_trainer import SMALL_CONFIG

        small_fleet(tmp_path, seed=7)
        config = tmp_path / "config.toml"
        config.write_text(SMALL_CONFIG)
        argv = ["--config", str(config), "--train-csv", str(tmp_path / "train"), "--test-csv"]
        argv += [str(tmp_path / "test"), "--out", str(tmp_path / "models"), "--no-report"]
        assert 0 == train_main([*argv, "--sign-key", str(keys.private)])
        version = tmp_path / "models" / "arm-test" / "1"
        verifier = ModelVerifier(TrustedKeys.load(keys.trusted))
        scorer = OnnxScorer.load(version, verifier=verifier)
        scorer.check_golden()
        assert "fleet" == scorer.manifest.signing_key_id


class TestRefusalReasons:
    def test_a_signed_directory_whose_manifest_names_no_key_or_is_not_json_says_so(
        self, tmp_path: Path, keys: Keys
    ) -> None:
        """A signature beside a manifest without signing_key_id, or beside non-JSON, says which."""
        verifier = ModelVerifier(TrustedKeys.load(keys.trusted))
        signed_model(tmp_path / "m", keys, version=2)
        manifest = json.loads((tmp_path / "m" / MANIFEST_FILE).read_text())
        del manifest["signing_key_id"]
        (tmp_path / "m" / MANIFEST_FILE).write_text(json.dumps(manifest))
        with pytest.raises(ModelRejectedError, match="names no signing_key_id"):
            OnnxScorer.load(tmp_path / "m", verifier=verifier)
        (tmp_path / "m" / MANIFEST_FILE).write_bytes(b"\xff{ not json")
        with pytest.raises(ModelRejectedError, match="is not JSON"):
            OnnxScorer.load(tmp_path / "m", verifier=verifier)
