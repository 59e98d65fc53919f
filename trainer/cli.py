"""``robotpm-train``: the orchestrator of the trainer, with the original design's flags.

Usage::

    robotpm-train --train-csv DIR_OR_CSV --test-csv DIR_OR_CSV [--out models] [--name robot-arm]
    robotpm-train --db sqlite:///fleet.db [--table samples] ...      # training data from SQL
    robotpm-train --mode stream --config config.toml                  # retrain as data arrives
    robotpm-train bundle [--seed 7] [--out agent/models/bundled]     # the bundled default model
    robotpm-train dataset ai4i|cmapss [--out models]                  # the real-data benchmarks
    robotpm-train import-sql LOGS --db URL [--table samples]          # load CSV logs into SQL
    robotpm-train list|show|promote|rollback ...                      # the registry
    robotpm-train keygen --key-id ID --out DIR                        # an Ed25519 key pair
    robotpm-train sign MODEL_DIR --key DIR/ID.key [--key-id ID]       # sign a model directory
    robotpm-train ... --sign-key DIR/ID.key [--key-id ID]             # sign the version a run writes
    robotpm-train publish VERSION_DIR --channel NAME --base-url URL --out WEBROOT \
        [--mqtt-host H --mqtt-port P]                                  # bundle + retained announcement

Exit codes: 0 success, 1 a trainer error (message on stderr, nothing written),
2 bad configuration or arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from agent.contract.errors import ConfigError, RobotPMError
from trainer.config import TrainerConfig, load_trainer_config
from trainer.errors import TrainerError
from trainer.stages.extraction import Dataset

PROG = "robotpm-train"
SUBCOMMANDS = (
    "bundle",
    "dataset",
    "import-sql",
    "keygen",
    "sign",
    "publish",
    "list",
    "show",
    "promote",
    "rollback",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the trainer CLI; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        if args_list and args_list[0] in SUBCOMMANDS:
            return _subcommand(args_list)
        return _train(args_list)
    except ConfigError as exc:
        print(f"{PROG}: config error: {exc}", file=sys.stderr)
        return 2
    except (TrainerError, RobotPMError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing written", file=sys.stderr)
        return 130


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file (default: ./config.toml if present, else defaults)",
    )
    parser.add_argument("--profile", default=None, help="config profile: dev, test or prod")


def _load(args: argparse.Namespace) -> TrainerConfig:
    path = args.config
    if path is None and Path("config.toml").exists():
        path = Path("config.toml")
    return load_trainer_config(path, args.profile)


def _train(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train a model on sensor logs, evaluate it, export ONNX with a parity check and "
        f"register it. Subcommands: {', '.join(SUBCOMMANDS)} (see '{PROG} <subcommand> --help').",
    )
    _common(parser)
    parser.add_argument("--train-csv", type=Path, help="training logs: a CSV file or a (fleet) directory")
    parser.add_argument("--test-csv", type=Path, help="held-out logs: a CSV file or a (fleet) directory")
    parser.add_argument(
        "--db", help="training data from SQL, e.g. sqlite:///fleet.db or postgresql://user@host/db"
    )
    parser.add_argument("--table", default="samples", help="SQL table of samples (with --db)")
    parser.add_argument(
        "--mode",
        choices=("batch", "stream"),
        default="batch",
        help="batch: train once; stream: watch trainer.incoming and retrain when enough data arrived",
    )
    parser.add_argument(
        "--task",
        choices=("failure", "anomaly", "rul"),
        default="failure",
        help="failure: classifier of failure modes (needs truth); anomaly: IsolationForest on healthy data; "
        "rul: remaining useful life regressor (needs truth)",
    )
    parser.add_argument("--out", type=Path, default=None, help="registry root (default: trainer.registry)")
    parser.add_argument("--name", default=None, help="model name (default: trainer.model_name)")
    parser.add_argument("--bundled", type=Path, default=None, help="also write the model to this directory")
    parser.add_argument("--no-report", action="store_true", help="skip the plots and PDF report")
    parser.add_argument("--promote", action="store_true", help="promote through the champion gate")
    parser.add_argument("--once", action="store_true", help="stream mode: check the incoming directory once")
    parser.add_argument(
        "--sign-key",
        type=Path,
        default=None,
        help="sign the registered version with this Ed25519 private key",
    )
    parser.add_argument("--key-id", default=None, help="key id for --sign-key (default: the key file's stem)")
    args = parser.parse_args(argv)
    if args.sign_key is not None and args.mode == "stream":
        parser.error("--sign-key works with --mode batch only; sign stream versions with 'sign'")
    config = _load(args)
    if args.mode == "stream":
        from trainer.stream import run_stream

        return run_stream(config, registry_root=args.out, name=args.name, once=args.once)
    from trainer.tasks.failure import RunResult, train_failure_classifier

    train: Path | Dataset
    test: Path | Dataset
    if args.db:
        from trainer.sources.sql import read_sql_dataset, split_sql_dataset

        if args.test_csv is not None:
            train, test = read_sql_dataset(args.db, args.table, config.record_schema()), args.test_csv
        else:
            train, test = split_sql_dataset(args.db, args.table, config)
    else:
        if args.train_csv is None or args.test_csv is None:
            parser.error("give --train-csv and --test-csv (or --db)")
        train, test = args.train_csv, args.test_csv
    trainer_function: Callable[..., RunResult] = train_failure_classifier
    if args.task == "anomaly":
        from trainer.tasks.anomaly import train_anomaly_detector

        trainer_function = train_anomaly_detector
    elif args.task == "rul":
        from trainer.tasks.rul import train_rul_regressor

        trainer_function = train_rul_regressor
    result = trainer_function(
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
    _print_result(result)
    return 0


def _print_result(result: object) -> None:
    from trainer.tasks.failure import RunResult

    assert isinstance(result, RunResult)
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


def _subcommand(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    parser = argparse.ArgumentParser(prog=f"{PROG} {command}")
    _common(parser)
    if command == "bundle":
        parser.description = "Simulate a fleet, train and write the bundled default model (≤ 1 MB)."
        parser.add_argument("--seed", type=int, default=7)
        parser.add_argument("--out", type=Path, default=Path("agent/models/bundled"))
        parser.add_argument("--report", action="store_true", help="also write the plots and PDF report")
        args = parser.parse_args(rest)
        from trainer.bundle import build_bundle

        result = build_bundle(_load(args), args.out, seed=args.seed, report=args.report)
        _print_result(result)
        return 0
    if command == "dataset":
        parser.description = "Train and evaluate on a real public dataset (read in place)."
        parser.add_argument("dataset", choices=("ai4i", "cmapss"))
        parser.add_argument(
            "--data", type=Path, default=None, help="dataset directory (default ../shared/data/…)"
        )
        parser.add_argument(
            "--out", type=Path, default=None, help="registry root (default: trainer.registry)"
        )
        parser.add_argument("--seed", type=int, default=7)
        args = parser.parse_args(rest)
        from trainer.datasets import run_dataset

        summary = run_dataset(
            args.dataset, _load(args), data_dir=args.data, registry_root=args.out, seed=args.seed
        )
        print(json.dumps(summary, indent=2))
        return 0
    if command == "keygen":
        parser.description = "Make an Ed25519 key pair: ID.key (private, mode 0600) and ID.pub (for agents)."
        parser.add_argument("--key-id", required=True, help="the key id models will name, e.g. fleet-2026")
        parser.add_argument("--out", type=Path, required=True, help="directory for ID.key and ID.pub")
        args = parser.parse_args(rest)
        from trainer.signing import generate_key_pair

        private_path, public_path = generate_key_pair(args.key_id, args.out)
        print(f"wrote {private_path} (private, keep it secret) and {public_path} (copy to agents)")
        return 0
    if command == "sign":
        parser.description = "Sign a model directory: set signing_key_id and write manifest.sig."
        parser.add_argument("model_dir", type=Path, help="a directory holding model.onnx and manifest.json")
        parser.add_argument("--key", type=Path, required=True, help="the Ed25519 private key (ID.key)")
        parser.add_argument("--key-id", default=None, help="the key id (default: the key file's stem)")
        expiry = parser.add_mutually_exclusive_group()
        expiry.add_argument(
            "--expires",
            type=_datetime,
            default=None,
            help="ISO 8601 date or time after which agents refuse it",
        )
        expiry.add_argument("--valid-days", type=float, default=None, help="expires this many days from now")
        args = parser.parse_args(rest)
        from trainer.signing import sign_model_dir

        expires = args.expires
        if args.valid_days is not None:
            expires = datetime.now(timezone.utc) + timedelta(days=args.valid_days)
        manifest = sign_model_dir(args.model_dir, args.key, args.key_id or args.key.stem, expires=expires)
        until = f", expires {manifest.expires.isoformat()}" if manifest.expires else ""
        print(f"signed {manifest.label} in {args.model_dir} with key {manifest.signing_key_id}{until}")
        return 0
    if command == "publish":
        parser.description = (
            "Write the bundle of a (signed) model version into a web root and announce it, retained, "
            "on robotpm/v1/models/<channel> for the agents following that channel."
        )
        parser.add_argument("version_dir", type=Path, help="a directory holding model.onnx and manifest.json")
        parser.add_argument("--channel", default=None, help="the channel (default: the manifest's)")
        parser.add_argument("--base-url", required=True, help="the URL the web root is served at (https://…)")
        parser.add_argument("--out", type=Path, required=True, help="the web root to write the bundle into")
        parser.add_argument("--mqtt-host", default=None, help="broker to announce on (none: only write it)")
        parser.add_argument("--mqtt-port", type=int, default=1883)
        args = parser.parse_args(rest)
        from trainer.publish import publish

        announcement = publish(
            args.version_dir,
            channel=args.channel,
            base_url=args.base_url,
            webroot=args.out,
            mqtt_host=args.mqtt_host,
            mqtt_port=args.mqtt_port,
        )
        where = (
            f" on {args.mqtt_host}:{args.mqtt_port}" if args.mqtt_host else " (not announced: no --mqtt-host)"
        )
        print(f"published {announcement.label} as {announcement.url} ({announcement.length} bytes){where}")
        print(announcement.to_json().decode())
        return 0
    if command == "import-sql":
        parser.description = "Load CSV/JSON-lines logs (and truth.csv) into a SQL table that --db reads."
        parser.add_argument("logs", type=Path, help="a log file, robot directory or fleet directory")
        parser.add_argument("--db", required=True, help="SQLAlchemy URL, e.g. sqlite:///fleet.db")
        parser.add_argument("--table", default="samples")
        args = parser.parse_args(rest)
        from trainer.sources.sql import load_logs_into_sql

        rows = load_logs_into_sql(args.logs, args.db, args.table, _load(args))
        print(f"loaded {rows} rows into {args.table}")
        return 0
    parser.add_argument("--out", type=Path, default=None, help="registry root (default: trainer.registry)")
    parser.add_argument("--name", default=None, help="model name (default: trainer.model_name)")
    if command in ("show", "promote"):
        parser.add_argument("version", type=int)
    if command == "promote":
        parser.add_argument("--force", action="store_true", help="skip the champion/challenger gate")
        parser.add_argument("--test-csv", type=Path, default=None, help="held-out data for the gate")
    args = parser.parse_args(rest)
    config = _load(args)
    from trainer.registry import Registry

    registry = Registry(args.out or config.registry, args.name or config.model_name)
    if command == "list":
        infos = registry.list()
        if not infos:
            print(f"no versions in {registry.directory}")
        for info in infos:
            flag = "*" if info.champion else " "
            headline = ", ".join(f"{k}={v:.4g}" for k, v in list(info.metrics.items())[:4])
            print(f"{flag} v{info.version:<4d} {info.created[:19]:19s} {headline}")
        return 0
    if command == "show":
        manifest = registry.manifest(args.version)
        print(manifest.to_json(), end="")
        return 0
    if command == "promote":
        from trainer.gate import promote_version

        promote_version(registry, args.version, config, force=args.force, test_path=args.test_csv)
        print(f"v{args.version} is the champion of {registry.directory}")
        return 0
    champion = registry.rollback()
    print(f"rolled back: v{champion} is the champion of {registry.directory}")
    return 0


def _datetime(text: str) -> datetime:
    """An ISO 8601 date or date-time for argparse; without a time zone it is UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
