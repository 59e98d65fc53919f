"""The one exception tree of the agent package.

Every error the agent raises on purpose derives from `RobotPMError`, so a caller
can catch the whole family at once. Third-party errors (onnxruntime, paho-mqtt,
sqlite3) are translated into these at the module that talks to the library.

    RobotPMError
     ├── ConfigError            bad configuration: the CLI exits with code 2
     ├── ContractError          data that breaks the edge contract
     │    ├── RecordError       a sensor line that cannot be parsed or validated
     │    └── ManifestError     a model manifest that is malformed or inconsistent
     ├── ModelError             a model that cannot be used
     │    ├── ModelLoadError    onnxruntime refused the model, or a file is missing
     │    └── ModelRejectedError  verification refused it (signature, checks, golden test)
     ├── IngestError            a log source cannot be followed (missing directory, I/O)
     ├── StateError             the agent's local state store is unusable
     └── PublishError           alerts cannot be handed to the transport
"""

from __future__ import annotations


class RobotPMError(Exception):
    """Base class of every error the agent raises on purpose.

    Catch this to handle anything RobotPM-specific::

        try:
            run(config)
        except RobotPMError as exc:
            log.error("agent_failed", error=str(exc))
    """


class ConfigError(RobotPMError):
    """The configuration is invalid; the message names the file, the key and the problem."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        super().__init__(f"{path}: {key}: {problem}")


class ContractError(RobotPMError):
    """Data that breaks the edge contract between agent and trainer."""


class RecordError(ContractError):
    """A sensor line that cannot be parsed or validated."""


class ManifestError(ContractError):
    """A model manifest that is malformed or inconsistent with its model."""


class ModelError(RobotPMError):
    """A model that cannot be used."""


class ModelLoadError(ModelError):
    """A model file is missing or onnxruntime refused to load it."""


class ModelRejectedError(ModelError):
    """A model was refused by verification: signature, static checks or golden test."""


class IngestError(RobotPMError):
    """A log source cannot be followed."""


class StateError(RobotPMError):
    """The local state store (offsets, windows, outbox) is unusable."""


class PublishError(RobotPMError):
    """Alerts cannot be handed to the transport."""
