"""The wheel is the product: installed the README's way under a temporary root, it checks, runs and verifies.

The module builds the wheel once (``python -m build``), installs it into a fresh venv at
``<root>/opt/robotpm`` with only the base dependencies, and lays out the rest as README.md,
"Install on a robot", says: the units in ``<root>/etc/systemd/system``, the config template in
``<root>/etc/robotpm``, the MQTT credential where systemd's LoadCredential= puts it. Every file
is taken out of the installed package (importlib.resources in the venv's own interpreter).
Absolute paths of the template are moved under the root, as an integrator would edit them;
systemctl is the only step not run (no service manager here): ``systemd-analyze verify
--root`` checks the units as installed instead.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config import load_agent_config, packaged_model
from robotpm_sim.fleet import simulate_history
from robotpm_sim.formatting import format_records
from robotpm_sim.records import header_line
from tests.fake_broker import Collector
from tests.mosquitto import Broker
from tests.robot_install import (
    REPO,
    build_wheel,
    clean_env,
    configure_template,
    install_venv,
    lines_read,
    package_dir,
    start_agent,
    wait_ready,
    write_atomically,
)
from trainer.config import load_trainer_config

pytestmark = pytest.mark.timeout(900)
"""The first test also builds the wheel and the venv (about a minute; more on a cold pip cache)."""

UNITS = {"agent": ["robotpm-agent.service"], "trainer": ["robotpm-trainer.service", "robotpm-trainer.timer"]}
DROPINS = {
    "robotpm-agent.service": "[Service]\nLoadCredential=mqtt:/etc/robotpm/mqtt.credentials\n"
    "LoadCredential=robot.key:/etc/robotpm/robot.key\n",
    "robotpm-trainer.service": "[Service]\nLoadCredential=fleet-1.key:/etc/robotpm/keys/fleet-1.key\n"
    "ExecStart=\n"
    "ExecStart=/opt/robotpm/bin/robotpm-train --config /etc/robotpm/config.toml --profile prod "
    "--db ${ROBOTPM_TRAIN_DB} --promote --sign-key %d/fleet-1.key --key-id fleet-1\n",
}
"""README.md's drop-ins: the agent's MQTT credential and client key, the trainer's signing key."""
LOG_LINES = 3000
"""Simulated records in the robot's log: 60 s at 50 Hz, 27 windows of the bundled model."""


@dataclass(frozen=True)
class Robot:
    """A robot installed under `root`."""

    root: Path
    venv: Path
    python: Path
    config: Path

    @property
    def agent(self) -> Path:
        return self.venv / "bin" / "robotpm-agent"

    def package_dir(self, package: str) -> Path:
        """Where the venv's interpreter finds `package`'s files (importlib.resources)."""
        return package_dir(self.python, package)

    def run_python(self, *args: str) -> str:
        """The output of the venv's interpreter run with `args`, outside the source tree."""
        done = subprocess.run(
            [str(self.python), *args],
            capture_output=True,
            text=True,
            env=clean_env(),
            cwd=self.root,
            check=True,
        )
        return done.stdout


@pytest.fixture(scope="module", name="robot")
def _robot(tmp_path_factory: pytest.TempPathFactory) -> Robot:
    work = tmp_path_factory.mktemp("wheel")
    root = tmp_path_factory.mktemp("root")
    venv = root / "opt" / "robotpm"
    python = install_venv(venv, build_wheel(work))
    robot = Robot(root, venv, python, root / "etc" / "robotpm" / "config.toml")
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    for package, names in UNITS.items():
        for name in names:
            shutil.copy(robot.package_dir(package) / "install" / name, units / name)
    # the drop-ins of "Install on a robot" and "Install the trainer", and the file LoadCredential= reads
    for unit, text in DROPINS.items():
        (units / f"{unit}.d").mkdir()
        (units / f"{unit}.d" / "credentials.conf").write_text(text)
    robot.config.parent.mkdir(parents=True)
    (robot.config.parent / "mqtt.credentials").write_text("robot-001:not-a-real-secret\n")
    credential = root / "run" / "credentials" / "robotpm-agent.service" / "mqtt"
    credential.parent.mkdir(parents=True)
    shutil.copy(robot.config.parent / "mqtt.credentials", credential)
    template = (robot.package_dir("agent") / "install" / "config.toml").read_text()
    robot.config.write_text(configure_template(template, root))
    # what StateDirectory= creates before the agent starts, and the controller's log directory
    (root / "var" / "lib" / "robotpm-agent").mkdir(parents=True)
    (root / "var" / "log" / "robot" / "arm1").mkdir(parents=True)
    return robot


def test_the_wheel_installs_only_the_agents_dependencies(robot: Robot) -> None:
    """The fresh venv holds the agent's runtime dependencies, nothing of the trainer, dev or demo extras."""
    listed = json.loads(robot.run_python("-m", "pip", "list", "--format=json", "--disable-pip-version-check"))
    names = {p["name"].lower() for p in listed}
    assert {"robotpm", "numpy", "onnxruntime", "paho-mqtt", "pydantic", "structlog"} <= names
    unwanted = {
        "scikit-learn",
        "pandas",
        "matplotlib",
        "skl2onnx",
        "onnx",
        "sqlalchemy",
        "amqtt",
        "pytest",
        "watchdog",
        "coverage",
        "psutil",
        "rich",
    }
    assert names.isdisjoint(unwanted), names & unwanted


def test_the_packaged_files_come_from_the_installed_package(robot: Robot) -> None:
    """The bundled model, the template and the units are inside site-packages, not in the source tree."""
    agent_dir = robot.package_dir("agent")
    assert agent_dir.is_relative_to(robot.venv)
    for name in (
        "models/bundled/model.onnx",
        "models/bundled/manifest.json",
        "install/config.toml",
        "install/robotpm-agent.service",
    ):
        assert (agent_dir / name).is_file(), name
    for name in UNITS["trainer"]:
        assert (robot.package_dir("trainer") / "install" / name).is_file(), name
    bundled = robot.run_python(
        "-c", "from agent.config import packaged_model; print(packaged_model())"
    ).strip()
    assert Path(bundled) == agent_dir / "models" / "bundled"


def test_the_wheels_units_are_the_units_of_the_systemd_folder(robot: Robot) -> None:
    """systemd/ is the units' only source: the installed package carries them byte for byte."""
    for package, names in UNITS.items():
        for name in names:
            installed = robot.package_dir(package) / "install" / name
            assert installed.read_bytes() == (REPO / "systemd" / name).read_bytes(), installed


def _named_paths(unit: Path) -> dict[str, list[Path]]:
    """The absolute paths a unit names that must exist, by setting: documents, programs, their arguments.

    Left out: paths systemd makes itself (WorkingDirectory= inside a RuntimeDirectory=), ones it
    may miss by design (a leading ``-``), and ones inside a variable (``${…}``) or an
    Environment= value.
    """
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    named: dict[str, list[Path]] = {}
    for value in settings.get("Documentation", []):
        for uri in value.split():
            assert uri.startswith("file://"), f"{unit.name}: Documentation={uri} is not a file: URI"
            named.setdefault("Documentation", []).append(Path(uri.removeprefix("file://")))
    for key, values in settings.items():
        if key.startswith("Exec") or key in ("EnvironmentFile", "ReadOnlyPaths", "ReadWritePaths"):
            for word in " ".join(values).split():
                word = word.lstrip("@:+!") if key.startswith("Exec") else word
                if word.startswith("/") and "$" not in word:
                    named.setdefault(key, []).append(Path(word))
    runtime = {f"/run/{d}" for d in settings.get("RuntimeDirectory", [])}
    for directory in settings.get("WorkingDirectory", []):
        assert directory in runtime, f"{unit.name}: WorkingDirectory={directory} is made by nothing"
    return named


def test_every_path_the_installed_units_name_exists_after_the_install(robot: Robot) -> None:
    """Documentation=, the programs and their files are there: the install's under the root, the OS's here."""
    units = robot.root / "etc" / "systemd" / "system"
    documents = []
    for names in UNITS.values():
        for name in names:
            for key, paths in _named_paths(units / name).items():
                for path in paths:
                    ours = path.is_relative_to("/opt/robotpm") or path.is_relative_to("/etc/robotpm")
                    where = robot.root / path.relative_to("/") if ours else path
                    assert where.exists(), f"{name}: {key} names {path}, which the install does not make"
                    if key == "Documentation":
                        documents.append(where)
    assert documents
    assert all(d.is_relative_to(robot.venv) for d in documents), documents
    assert (robot.venv / "share" / "doc" / "robotpm" / "README.md").read_bytes() == (
        REPO / "README.md"
    ).read_bytes()


def _system_programs(units: Path) -> set[Path]:
    """The programs the installed units and drop-ins run that the install does not provide."""
    programs = set()
    for unit in units.rglob("*"):
        for line in unit.read_text().splitlines() if unit.is_file() else ():
            if re.match(r"Exec[A-Za-z]*=\S", line):
                program = Path(line.split("=", 1)[1].split()[0].lstrip("-@:+!"))
                if not program.is_relative_to("/opt/robotpm"):
                    programs.add(program)
    return programs


def test_the_installed_units_verify_with_their_credential_drop_ins(robot: Robot) -> None:
    """systemd-analyze verify --root accepts every unit as installed, ExecStart being the venv's program."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is needed (apt-get install systemd)")
    # what the operating system provides must be under the root too: the units a service pulls
    # in (sysinit.target, …) and the programs the units run that are not ours (ExecReload=/bin/kill)
    system_units = robot.root / "usr" / "lib" / "systemd" / "system"
    if not system_units.exists():
        shutil.copytree("/usr/lib/systemd/system", system_units, symlinks=True)
    for program in _system_programs(robot.root / "etc" / "systemd" / "system"):
        (robot.root / program.relative_to("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(program, robot.root / program.relative_to("/"))
    for names in UNITS.values():
        for name in names:
            done = subprocess.run(
                [tool, "verify", "--man=no", f"--root={robot.root}", name],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert (done.returncode, done.stderr) == (0, ""), name
    assert (robot.root / "opt" / "robotpm" / "bin" / "robotpm-agent").is_file()


def test_check_with_the_prod_profile_loads_the_packaged_bundled_model(robot: Robot) -> None:
    """robotpm-agent check --profile prod, run from the venv, validates the template and loads robot-arm@1."""
    done = subprocess.run(
        [str(robot.agent), "check", "--config", str(robot.config), "--profile", "prod"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=robot.root,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "model ok: robot-arm@1" in done.stdout
    loaded = [json.loads(line) for line in done.stdout.splitlines() if '"model_loaded"' in line]
    assert Path(loaded[0]["source"]) == robot.package_dir("agent") / "models" / "bundled"


def test_the_installed_agent_leaves_no_onnxruntime_telemetry_behind(robot: Robot, tmp_path: Path) -> None:
    """Check loads the model in onnxruntime and leaves no device id, event queue or other file in HOME."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**clean_env(), "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    env.pop("ORT_DISABLE_TELEMETRY", None)
    done = subprocess.run(
        [str(robot.agent), "check", "--config", str(robot.config), "--profile", "prod"],
        capture_output=True,
        text=True,
        env=env,
        cwd=robot.root,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "model ok: robot-arm@1" in done.stdout
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == []


@pytest.fixture(name="notify")
def _notify(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(1.0)
    try:
        yield sock, path
    finally:
        sock.close()


@pytest.mark.mosquitto
def test_a_short_run_scores_the_log_with_the_packaged_model_and_stops_on_sigterm(
    robot: Robot, broker: Broker, notify: tuple[socket.socket, Path]
) -> None:
    """The installed agent comes online at the broker, reads the controller's log to its end, exits 0."""
    sock, notify_path = notify
    _, values, _ = simulate_history("robot-001", LOG_LINES / 50.0, 50.0, 7, faults=())
    write_atomically(robot.root / "var/log/robot/arm1/arm1.csv", header_line() + format_records(values))
    output = robot.root / "agent.out"
    with Collector(broker.port, ("robotpm/v1/plant-1/robot-001/#",), client_id="install-test") as sub:
        with output.open("wb") as out:
            process = start_agent(
                robot.agent, robot.config, root=robot.root, port=broker.port, notify=notify_path, out=out
            )
        try:
            assert wait_ready(sock, process, 60), output.read_text()[-3000:]
            assert sub.wait_for(lambda s: any(m.json().get("state") == "online" for m in s.on("/status")), 30)
            deadline = time.monotonic() + 60
            while lines_read(robot.agent, robot.config) < LOG_LINES and time.monotonic() < deadline:
                time.sleep(0.2)
            assert lines_read(robot.agent, robot.config) == LOG_LINES
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert process.returncode == 0, output.read_text()[-3000:]
    log = output.read_text()
    assert '"agent_started"' in log
    assert '"model": "robot-arm@1"' in log


def _unit_settings(path: Path) -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )


@pytest.mark.parametrize("config", ["agent/install/config.toml", "config.toml"])
def test_the_prod_profile_uses_the_directories_the_units_create(config: str) -> None:
    """state, store, registry and work paths of the prod profile lie in the units' StateDirectory=."""
    agent_unit = _unit_settings(REPO / "systemd" / "robotpm-agent.service")
    trainer_unit = _unit_settings(REPO / "systemd" / "robotpm-trainer.service")
    agent = load_agent_config(REPO / config, "prod", environ={})
    state = Path("/var/lib") / agent_unit["StateDirectory"]
    assert agent.state_dir == state
    assert agent.model.directory.is_relative_to(state)
    assert f"--config /etc/{agent_unit['ConfigurationDirectory']}/config.toml" in agent_unit["ExecStart"]
    trainer = load_trainer_config(REPO / config, "prod", environ={})
    trainer_state = Path("/var/lib") / trainer_unit["StateDirectory"]
    for path in (trainer.registry, trainer.work_dir, trainer.incoming.incoming):
        assert path.is_relative_to(trainer_state), path
    if config.startswith("agent/"):
        assert agent.streams[0].directory.is_relative_to(Path(agent_unit["ReadOnlyPaths"].lstrip("-")))


def test_run_and_check_leave_the_technician_commands_unimported() -> None:
    """The daemon's commands do not load the technician's reports and views (~0.8 MiB of its RSS)."""
    code = (
        "import json, sys, agent.cli, agent.daemon; "
        "code = agent.cli.main(['check', '--config', '/nonexistent/config.toml']); "
        "print(json.dumps([code, sorted(m for m in sys.modules if m.startswith('agent.technician.'))]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60, check=True
    )
    code, loaded = json.loads(done.stdout.splitlines()[-1])
    assert code == 2, done.stderr
    assert "agent.technician.operations" in loaded  # the daemon's own part of the package
    technician_only = {"commands", "render", "reports", "views"}
    assert technician_only.isdisjoint(m.removeprefix("agent.technician.") for m in loaded), loaded


def test_the_config_template_serves_the_bundled_model_without_naming_it() -> None:
    """The template leaves agent.model.bundled unset, so the packaged model is the default."""
    agent = load_agent_config(REPO / "agent" / "install" / "config.toml", None, environ={})
    assert agent.model.bundled == REPO / "agent" / "models" / "bundled"
    assert packaged_model() == agent.model.bundled
