"""The model registry: atomic monotonic versions, the champion/challenger gate, list/show/promote/rollback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.contract.manifest import ModelManifest
from tests.fleets import small_fleet
from tests.trainer_configs import trainer_toml
from trainer import cli
from trainer.config import TrainerConfig
from trainer.errors import GateError, RegistryError
from trainer.gate import promote_version
from trainer.registry import Registry, write_directory_atomically


@pytest.fixture(scope="module", name="fleet")
def _fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return small_fleet(tmp_path_factory.mktemp("fleet"), seed=3)


def _config(tmp_path: Path, trees: int, depth: int) -> Path:
    path = tmp_path / f"config-{trees}-{depth}.toml"
    path.write_text(trainer_toml(trees=trees, depth=depth, horizon_s=60.0), encoding="utf-8")
    return path


def _train(config: Path, fleet: tuple[Path, Path], out: Path, *extra: str) -> int:
    argv = ["--config", str(config), "--train-csv", str(fleet[0]), "--test-csv", str(fleet[1])]
    return cli.main([*argv, "--out", str(out), "--no-report", *extra])


class TestAtomicWrites:
    def test_a_version_is_never_overwritten(self, tmp_path: Path) -> None:
        """Writing an existing version raises RegistryError and keeps the old files."""
        registry = Registry(tmp_path, "m")
        registry.write(1, {"a.txt": b"old"})
        with pytest.raises(RegistryError, match="already exists"):
            registry.write(1, {"a.txt": b"new"})
        assert (tmp_path / "m" / "1" / "a.txt").read_bytes() == b"old"

    def test_a_failed_write_leaves_no_directory(self, tmp_path: Path) -> None:
        """A write that fails half-way leaves neither the target nor its staging directory."""

        class Boom(dict[str, bytes]):
            def items(self):  # type: ignore[override]
                yield "model.onnx", b"x"
                raise OSError("disk full")

        with pytest.raises(OSError, match="disk full"):
            write_directory_atomically(tmp_path / "m" / "1", Boom())
        assert list((tmp_path / "m").iterdir()) == []

    def test_replacing_a_directory_swaps_it_whole(self, tmp_path: Path) -> None:
        """Rewriting the bundled directory replaces every file at once (no stale files remain)."""
        target = tmp_path / "bundled"
        write_directory_atomically(target, {"model.onnx": b"1", "old.json": b"{}"})
        write_directory_atomically(target, {"model.onnx": b"2"})
        assert sorted(p.name for p in target.iterdir()) == ["model.onnx"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bundled"]


class TestGateAndRollback:
    def test_promote_list_show_rollback(
        self, fleet: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The first version passes the gate; a better one replaces it; rollback restores the first."""
        out = tmp_path / "models"
        weak, strong = _config(tmp_path, 1, 1), _config(tmp_path, 12, 8)
        assert _train(weak, fleet, out, "--promote") == 0
        registry = Registry(out, "arm")
        assert registry.champion == 1
        assert _train(strong, fleet, out, "--promote") == 0
        assert registry.champion == 2
        history = registry.index()["history"]
        assert history[-1]["gate"]["challenger"] > history[-1]["gate"]["champion"]
        capsys.readouterr()
        assert cli.main(["list", "--config", str(strong), "--out", str(out)]) == 0
        listing = capsys.readouterr().out
        assert "* v2" in listing
        assert "  v1" in listing
        assert cli.main(["show", "2", "--config", str(strong), "--out", str(out)]) == 0
        assert ModelManifest.from_json(capsys.readouterr().out).version == 2
        assert cli.main(["rollback", "--config", str(strong), "--out", str(out)]) == 0
        assert registry.champion == 1
        assert cli.main(["rollback", "--config", str(strong), "--out", str(out)]) == 1

    def test_a_worse_challenger_is_refused(self, fleet: tuple[Path, Path], tmp_path: Path) -> None:
        """A challenger that does not beat the champion on the same held-out data stays a challenger."""
        out = tmp_path / "models"
        weak, strong = _config(tmp_path, 1, 1), _config(tmp_path, 12, 8)
        assert _train(strong, fleet, out, "--promote") == 0
        assert _train(weak, fleet, out) == 0
        registry = Registry(out, "arm")
        config = TrainerConfig(model_name="arm")
        with pytest.raises(GateError, match="does not beat champion v1"):
            promote_version(registry, 2, config, test_path=fleet[1])
        assert registry.champion == 1
        with pytest.raises(GateError, match="needs held-out data"):
            promote_version(registry, 2, config)
        promote_version(registry, 2, config, force=True)
        assert registry.champion == 2
        assert json.loads((out / "arm" / "registry.json").read_text())["history"][-1]["forced"] is True

    def test_a_tampered_model_is_refused(self, fleet: tuple[Path, Path], tmp_path: Path) -> None:
        """A version whose model.onnx no longer matches its manifest cannot be shown or promoted."""
        out = tmp_path / "models"
        assert _train(_config(tmp_path, 2, 3), fleet, out) == 0
        model = out / "arm" / "1" / "model.onnx"
        model.write_bytes(model.read_bytes() + b"\0")
        with pytest.raises(RegistryError, match="sha256/length differ"):
            Registry(out, "arm").promote(1)
