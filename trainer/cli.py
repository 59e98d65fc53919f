"""``robotpm-train``: the orchestrator of the trainer, with the original design's flags.

Usage::

    robotpm-train --train-csv DIR_OR_CSV --test-csv DIR_OR_CSV [--out models] [--name robot-arm]
    robotpm-train --db sqlite:///fleet.db [--table samples] ...      # training data from SQL
    robotpm-train --mode stream --config config.toml                  # retrain as data arrives
    robotpm-train bundle [--seed 7] [--out agent/models/bundled]     # the bundled default model
    robotpm-train dataset ai4i|cmapss [--out models]                  # the public benchmark data
    robotpm-train inspect TRAIN [TEST]                                # what the trainer will see
    robotpm-train import-sql LOGS --db URL [--table samples]          # load CSV logs into SQL
    robotpm-train list|show|promote|rollback ...                      # the registry
    robotpm-train keygen --key-id ID --out DIR                        # an Ed25519 key pair
    robotpm-train sign MODEL_DIR --key DIR/ID.key [--key-id ID]       # sign a model directory
    robotpm-train ... --sign-key DIR/ID.key [--key-id ID]             # sign the version a run writes
    robotpm-train publish VERSION_DIR --channel NAME --base-url URL --out WEBROOT \
        [--mqtt-host H --mqtt-port P]                                  # bundle + retained announcement

Without a subcommand it trains (`train`). A subcommand is one function taking the parsed
arguments and returning the exit code, registered with `subcommand`::

    @subcommand("hello", "Say hello.", arg("--who", default="world"))
    def _hello(args: argparse.Namespace) -> int:
        print(f"hello {args.who}")
        return 0

Every subcommand also takes ``--config`` and ``--profile`` (`load_config` reads them).

Exit codes: 0 success, 1 a trainer error (message on stderr, nothing written),
2 bad configuration or arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from agent.contract.errors import ConfigError, RobotPMError
from trainer.config import TrainerConfig, load_trainer_config
from trainer.errors import TrainerError
from trainer.registry import Registry
from trainer.run import RunResult
from trainer.stages.extraction import Dataset

PROG = "robotpm-train"

Command = Callable[[argparse.Namespace], int]


@dataclass(frozen=True, slots=True)
class Argument:
    """One ``add_argument`` call: its flags (or positional name) and keyword options."""

    flags: tuple[str, ...]
    options: dict[str, Any]


def arg(*flags: str, **options: Any) -> Argument:
    """An argument of a subcommand, written as for `argparse.ArgumentParser.add_argument`."""
    return Argument(flags, options)


@dataclass(frozen=True, slots=True)
class Subcommand:
    """A registered subcommand: its name, one-line description, arguments and function."""

    name: str
    description: str
    arguments: tuple[Argument, ...]
    run: Command


SUBCOMMANDS: dict[str, Subcommand] = {}
"""Subcommand name → subcommand, in registration order (the order ``--help`` lists them)."""


def subcommand(name: str, description: str, *arguments: Argument) -> Callable[[Command], Command]:
    """Register the decorated function as subcommand `name`."""

    def register(run: Command) -> Command:
        if name in SUBCOMMANDS:
            raise ValueError(f"subcommand {name!r} is registered twice")
        SUBCOMMANDS[name] = Subcommand(name, description, arguments, run)
        return run

    return register


def main(argv: Sequence[str] | None = None) -> int:
    """Run the trainer CLI; returns the exit code."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"{PROG}: config error: {exc}", file=sys.stderr)
        return 2
    except (TrainerError, RobotPMError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing written", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The parser: the training flags at the top, one sub-parser per registered subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train a model on sensor logs, evaluate it, export ONNX with a parity check and "
        f"register it. Subcommands: {', '.join(SUBCOMMANDS)} (see '{PROG} <subcommand> --help').",
    )
    _common(parser)
    for argument in TRAIN_ARGUMENTS:
        parser.add_argument(*argument.flags, **argument.options)
    parser.set_defaults(run=_train, parser=parser)
    children = parser.add_subparsers(title="subcommands (without one: train)", metavar="SUBCOMMAND")
    for command in SUBCOMMANDS.values():
        child = children.add_parser(command.name, help=command.description, description=command.description)
        _common(child)
        for argument in command.arguments:
            child.add_argument(*argument.flags, **argument.options)
        child.set_defaults(run=command.run, parser=child)
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file (default: ./config.toml if present, else defaults)",
    )
    parser.add_argument("--profile", default=None, help="config profile: dev, test or prod")


def load_config(args: argparse.Namespace) -> TrainerConfig:
    """The ``[trainer]`` config named by ``--config``/``--profile`` (./config.toml if present)."""
    path = args.config
    if path is None and Path("config.toml").exists():
        path = Path("config.toml")
    return load_trainer_config(path, args.profile)


# -- the default command: train --------------------------------------------------------------

TRAIN_ARGUMENTS = (
    arg("--train-csv", type=Path, help="training logs: a CSV file or a (fleet) directory"),
    arg("--test-csv", type=Path, help="held-out logs: a CSV file or a (fleet) directory"),
    arg("--db", help="training data from SQL, e.g. sqlite:///fleet.db or postgresql://user@host/db"),
    arg("--table", default="samples", help="SQL table of samples (with --db)"),
    arg(
        "--mode",
        choices=("batch", "stream"),
        default="batch",
        help="batch: train once; stream: watch trainer.incoming and retrain when enough data arrived",
    ),
    arg(
        "--task",
        choices=("failure", "anomaly", "rul"),
        default="failure",
        help="failure: classifier of failure modes (needs truth); anomaly: IsolationForest on healthy data; "
        "rul: remaining useful life regressor (needs truth)",
    ),
    arg("--out", type=Path, default=None, help="registry root (default: trainer.registry)"),
    arg("--name", default=None, help="model name (default: trainer.model_name)"),
    arg("--bundled", type=Path, default=None, help="also write the model to this directory"),
    arg("--no-report", action="store_true", help="skip the plots and PDF report"),
    arg("--promote", action="store_true", help="promote through the champion gate"),
    arg("--once", action="store_true", help="stream mode: check the incoming directory once"),
    arg(
        "--sign-key",
        type=Path,
        default=None,
        help="sign the registered version with this Ed25519 private key",
    ),
    arg("--key-id", default=None, help="key id for --sign-key (default: the key file's stem)"),
)


def _train(args: argparse.Namespace) -> int:
    if args.sign_key is not None and args.mode == "stream":
        args.parser.error("--sign-key works with --mode batch only; sign stream versions with 'sign'")
    if args.db is None and (args.train_csv is None or args.test_csv is None) and args.mode == "batch":
        args.parser.error("give --train-csv and --test-csv (or --db)")
    config = load_config(args)
    if args.mode == "stream":
        from trainer.stream import run_stream

        return run_stream(config, registry_root=args.out, name=args.name, once=args.once)
    train, test = _sources(args, config)
    result = _task_function(args.task)(
        config,
        train,
        test,
        registry_root=args.out,
        name=args.name,
        bundled_dir=args.bundled,
        report=not args.no_report,
    )
    if args.sign_key is not None and result.version_dir is not None:
        from trainer.signing import sign_model_dir

        result.manifest = sign_model_dir(result.version_dir, args.sign_key, args.key_id or args.sign_key.stem)
        print(f"signed {result.version_dir} with key {result.manifest.signing_key_id}")
    if args.promote and result.version_dir is not None:
        from trainer.gate import promote_through_gate

        promote_through_gate(config, result, registry_root=args.out, name=args.name)
    print_result(result)
    return 0


def _sources(args: argparse.Namespace, config: TrainerConfig) -> tuple[Path | Dataset, Path | Dataset]:
    """The training and held-out data named by ``--train-csv``/``--test-csv`` or ``--db``."""
    if not args.db:
        return args.train_csv, args.test_csv
    from trainer.sources.sql import read_sql_dataset, split_sql_dataset

    if args.test_csv is not None:
        return read_sql_dataset(args.db, args.table, config.record_schema()), args.test_csv
    return split_sql_dataset(args.db, args.table, config)


def _task_function(task: str) -> Callable[..., RunResult]:
    if task == "anomaly":
        from trainer.tasks.anomaly import train_anomaly_detector

        return train_anomaly_detector
    if task == "rul":
        from trainer.tasks.rul import train_rul_regressor

        return train_rul_regressor
    from trainer.tasks.failure import train_failure_classifier

    return train_failure_classifier


def print_result(result: RunResult) -> None:
    """What a run wrote, its parity, metrics, thresholds and stage timings."""
    manifest = result.manifest
    where = result.version_dir or result.bundled_dir
    print(f"wrote {manifest.label} to {where}  ({manifest.length} bytes, sha256 {manifest.sha256[:12]}…)")
    print(
        f"parity: max |onnx - sklearn| = {result.exported.max_abs_diff:.2e} "
        f"on {len(result.test)} test windows"
    )
    for key, value in result.evaluation.metrics.items():
        print(f"  {key:20s} {value:.4f}")
    for head in manifest.heads:
        t = head.thresholds
        print(
            f"  head {head.failure_mode:13s} warning {t.warning:.3f} "
            f"critical {t.critical:.3f} clear {t.clear:.3f}"
        )
    print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))


# -- subcommands -----------------------------------------------------------------------------


@subcommand(
    "bundle",
    "Simulate a fleet, train and write the bundled default model (≤ 1 MB).",
    arg("--seed", type=int, default=7),
    arg("--out", type=Path, default=Path("agent/models/bundled")),
    arg("--report", action="store_true", help="also write the plots and PDF report"),
)
def _bundle(args: argparse.Namespace) -> int:
    from trainer.bundle import build_bundle

    print_result(build_bundle(load_config(args), args.out, seed=args.seed, report=args.report))
    return 0


@subcommand(
    "dataset",
    "Train and evaluate on public benchmark data.",
    arg("dataset", choices=("ai4i", "cmapss")),
    arg(
        "--data",
        type=Path,
        default=None,
        help="dataset directory (default: data/<set>/ in the repository)",
    ),
    arg("--out", type=Path, default=None, help="registry root (default: trainer.registry)"),
    arg("--seed", type=int, default=7),
)
def _dataset(args: argparse.Namespace) -> int:
    from trainer.datasets import run_dataset

    summary = run_dataset(
        args.dataset, load_config(args), data_dir=args.data, registry_root=args.out, seed=args.seed
    )
    print(json.dumps(summary, indent=2))
    return 0


@subcommand(
    "inspect",
    "Print what the trainer will see: rows per robot, sample rate and jitter, events per mode, "
    "label balance per split, quarantine by reason.",
    arg("train", type=Path, help="training logs (a file, robot or fleet directory)"),
    arg("test", type=Path, nargs="?", default=None, help="held-out logs (optional)"),
)
def _inspect(args: argparse.Namespace) -> int:
    from trainer.inspection import describe

    splits = {"train": args.train} if args.test is None else {"train": args.train, "test": args.test}
    print(describe(load_config(args), splits), end="")
    return 0


@subcommand(
    "import-sql",
    "Load CSV/JSON-lines logs (and truth.csv) into a SQL table that --db reads.",
    arg("logs", type=Path, help="a log file, robot directory or fleet directory"),
    arg("--db", required=True, help="SQLAlchemy URL, e.g. sqlite:///fleet.db"),
    arg("--table", default="samples"),
)
def _import_sql(args: argparse.Namespace) -> int:
    from trainer.sources.sql import load_logs_into_sql

    rows = load_logs_into_sql(args.logs, args.db, args.table, load_config(args))
    print(f"loaded {rows} rows into {args.table}")
    return 0


@subcommand(
    "keygen",
    "Make an Ed25519 key pair: ID.key (private, mode 0600) and ID.pub (for agents).",
    arg("--key-id", required=True, help="the key id models will name, e.g. fleet-2026"),
    arg("--out", type=Path, required=True, help="directory for ID.key and ID.pub"),
)
def _keygen(args: argparse.Namespace) -> int:
    from trainer.signing import generate_key_pair

    private_path, public_path = generate_key_pair(args.key_id, args.out)
    print(f"wrote {private_path} (private, keep it secret) and {public_path} (copy to agents)")
    return 0


def _datetime(text: str) -> datetime:
    """An ISO 8601 date or date-time for argparse; without a time zone it is UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


@subcommand(
    "sign",
    "Sign a model directory: set signing_key_id and write manifest.sig.",
    arg("model_dir", type=Path, help="a directory holding model.onnx and manifest.json"),
    arg("--key", type=Path, required=True, help="the Ed25519 private key (ID.key)"),
    arg("--key-id", default=None, help="the key id (default: the key file's stem)"),
    arg("--expires", type=_datetime, default=None, help="ISO 8601 date or time after which agents refuse it"),
    arg("--valid-days", type=float, default=None, help="expires this many days from now"),
)
def _sign(args: argparse.Namespace) -> int:
    from trainer.signing import sign_model_dir

    if args.expires is not None and args.valid_days is not None:
        args.parser.error("argument --valid-days: not allowed with argument --expires")
    expires = args.expires
    if args.valid_days is not None:
        expires = datetime.now(timezone.utc) + timedelta(days=args.valid_days)
    manifest = sign_model_dir(args.model_dir, args.key, args.key_id or args.key.stem, expires=expires)
    until = f", expires {manifest.expires.isoformat()}" if manifest.expires else ""
    print(f"signed {manifest.label} in {args.model_dir} with key {manifest.signing_key_id}{until}")
    return 0


@subcommand(
    "publish",
    "Write the bundle of a (signed) model version into a web root and announce it, retained, "
    "on robotpm/v1/models/<channel> for the agents following that channel.",
    arg("version_dir", type=Path, help="a directory holding model.onnx and manifest.json"),
    arg("--channel", default=None, help="the channel (default: the manifest's)"),
    arg("--base-url", required=True, help="the URL the web root is served at (https://…)"),
    arg("--out", type=Path, required=True, help="the web root to write the bundle into"),
    arg("--mqtt-host", default=None, help="broker to announce on (none: only write it)"),
    arg("--mqtt-port", type=int, default=1883),
)
def _publish(args: argparse.Namespace) -> int:
    from trainer.publish import publish

    announcement = publish(
        args.version_dir,
        channel=args.channel,
        base_url=args.base_url,
        webroot=args.out,
        mqtt_host=args.mqtt_host,
        mqtt_port=args.mqtt_port,
    )
    where = f" on {args.mqtt_host}:{args.mqtt_port}" if args.mqtt_host else " (not announced: no --mqtt-host)"
    print(f"published {announcement.label} as {announcement.url} ({announcement.length} bytes){where}")
    print(announcement.to_json().decode())
    return 0


# -- the registry ----------------------------------------------------------------------------

HEADLINE_METRICS = (
    "pr_auc",
    "f1_macro",
    "event_detection_rate",
    "lead_time_s_median",
    "rmse_s",
    "f1",
    "rmse",
)
"""The metrics `list` shows first, as stored by the run (the same definitions as the gate)."""

REGISTRY_ARGUMENTS = (
    arg("--out", type=Path, default=None, help="registry root (default: trainer.registry)"),
    arg("--name", default=None, help="model name (default: trainer.model_name)"),
)


def open_registry(args: argparse.Namespace) -> tuple[Registry, TrainerConfig]:
    """The registry named by ``--out``/``--name`` (defaults from config) and the config."""
    config = load_config(args)
    return Registry(args.out or config.registry, args.name or config.model_name), config


@subcommand("list", "List the registered versions with their headline metrics.", *REGISTRY_ARGUMENTS)
def _list(args: argparse.Namespace) -> int:
    registry, _ = open_registry(args)
    infos = registry.list()
    if not infos:
        print(f"no versions in {registry.directory}")
    for info in infos:
        flag = "*" if info.champion else " "
        shown = [k for k in HEADLINE_METRICS if k in info.metrics] or list(info.metrics)[:4]
        headline = ", ".join(f"{k}={info.metrics[k]:.4g}" for k in shown)
        print(f"{flag} v{info.version:<4d} {info.created[:19]:19s} {headline}")
    return 0


@subcommand("show", "Print a version's manifest.", arg("version", type=int), *REGISTRY_ARGUMENTS)
def _show(args: argparse.Namespace) -> int:
    registry, _ = open_registry(args)
    print(registry.manifest(args.version).to_json(), end="")
    return 0


@subcommand(
    "promote",
    "Make a version the champion, through the champion/challenger gate.",
    arg("version", type=int),
    *REGISTRY_ARGUMENTS,
    arg("--force", action="store_true", help="skip the champion/challenger gate"),
    arg("--test-csv", type=Path, default=None, help="held-out data for the gate"),
)
def _promote(args: argparse.Namespace) -> int:
    from trainer.gate import promote_version

    registry, config = open_registry(args)
    promote_version(registry, args.version, config, force=args.force, test_path=args.test_csv)
    print(f"v{args.version} is the champion of {registry.directory}")
    return 0


@subcommand("rollback", "Return the champion pointer to the previous champion.", *REGISTRY_ARGUMENTS)
def _rollback(args: argparse.Namespace) -> int:
    registry, _ = open_registry(args)
    champion = registry.rollback()
    print(f"rolled back: v{champion} is the champion of {registry.directory}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
