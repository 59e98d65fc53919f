"""The one build step pyproject.toml cannot say: the systemd units of systemd/ go into the packages.

systemd/ is the only copy of the units in the tree. The wheel carries them as package data
(``agent/install/robotpm-agent.service``, ``trainer/install/robotpm-trainer.{service,timer}``),
so the installed package finds them with importlib.resources, as it finds the config template
and the bundled model. A package-data glob cannot reach outside the package directory and a
symlink does not survive every sdist and wheel tool, hence this copy at build time. Everything
else about the build is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

UNITS = {
    "agent": ("robotpm-agent.service",),
    "trainer": ("robotpm-trainer.service", "robotpm-trainer.timer"),
}
"""Which package carries which unit of systemd/, in its ``install/`` folder."""


class BuildPyWithUnits(build_py):
    """build_py, then the units of systemd/ into each package's install/ in the build tree."""

    def run(self) -> None:
        """Build the packages, then copy each package's units beside its config template."""
        super().run()
        here = Path(__file__).resolve().parent
        for package, names in UNITS.items():
            target = Path(self.build_lib) / package / "install"
            target.mkdir(parents=True, exist_ok=True)
            for name in names:
                shutil.copyfile(here / "systemd" / name, target / name)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        """What build_py wrote, the copied units included (installs and editable builds ask for it)."""
        units = [
            str(Path(self.build_lib) / package / "install" / name)
            for package, names in UNITS.items()
            for name in names
        ]
        return [*super().get_outputs(include_bytecode), *units]


setup(
    cmdclass={"build_py": BuildPyWithUnits},
    # the operator's documentation at a path without the Python version in it, for the units'
    # Documentation= (/opt/robotpm/share/doc/robotpm/ in the README's venv)
    data_files=[("share/doc/robotpm", ["README.md", "docs/field-guide.md"])],
)
