"""robotpm-train's command line: the original flags train, each subcommand is one registered function."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainer import cli


@pytest.fixture(name="registered")
def _registered() -> Iterator[list[str]]:
    """Names of subcommands a test registers; removed again afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        cli.SUBCOMMANDS.pop(name, None)


def test_a_registered_subcommand_runs_with_its_own_arguments(
    registered: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """One function plus one registration is a working subcommand, with --config and --profile."""

    @cli.subcommand("greet-test", "Say hello.", cli.arg("who"), cli.arg("--times", type=int, default=1))
    def _greet(args: argparse.Namespace) -> int:
        print(" ".join([f"hello {args.who}"] * args.times), args.profile)
        return 3

    registered.append("greet-test")
    assert cli.main(["greet-test", "arm", "--times", "2", "--profile", "dev"]) == 3
    assert capsys.readouterr().out == "hello arm hello arm dev\n"


def test_registering_a_name_twice_is_refused(registered: list[str]) -> None:
    """Two subcommands cannot share a name."""
    with pytest.raises(ValueError, match="'list' is registered twice"):
        cli.subcommand("list", "again")(lambda args: 0)


def test_every_subcommand_is_listed_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    """`robotpm-train --help` names every registered subcommand and the training flags."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in cli.SUBCOMMANDS:
        assert name in text
    for flag in ("--db", "--train-csv", "--test-csv", "--mode", "--task"):
        assert flag in text


def test_training_without_data_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """The default command without --train-csv/--test-csv or --db exits 2 saying what to give."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--train-csv", "x"])
    assert exit_info.value.code == 2
    assert "give --train-csv and --test-csv (or --db)" in capsys.readouterr().err


def test_an_unknown_registry_is_an_empty_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`list` on a registry without versions says so and exits 0."""
    assert cli.main(["list", "--out", str(tmp_path), "--name", "none"]) == 0
    assert "no versions in" in capsys.readouterr().out


def test_sign_refuses_both_expiry_forms(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`sign --expires … --valid-days …` is a usage error, as the two say the same thing."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sign", str(tmp_path), "--key", "k.key", "--expires", "2030-01-01", "--valid-days", "3"])
    assert exit_info.value.code == 2
    assert "not allowed with argument --expires" in capsys.readouterr().err
