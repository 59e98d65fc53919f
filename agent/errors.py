"""The agent's exceptions: the branches of RobotPM's one tree that only the daemon raises.

The root, `RobotPMError`, and the contract's errors (configuration, records,
manifests) live in `agent.contract.errors`, which the trainer shares. Third-party
errors (onnxruntime, paho-mqtt, sqlite3) are translated into these at the module
that talks to the library.

    RobotPMError                (agent.contract.errors)
     ├── ConfigError            (agent.contract.errors)
     ├── ContractError          (agent.contract.errors)
     ├── ModelError             a model that cannot be used
     │    ├── ModelLoadError    onnxruntime refused the model, or a file is missing
     │    └── ModelRejectedError  verification refused it (signature, checks, golden test)
     ├── IngestError            a log source cannot be followed (missing directory, I/O)
     ├── WatchError             a directory cannot be watched for changes as configured
     ├── StateError             the agent's local state store is unusable
     ├── PublishError           alerts cannot be handed to the transport
     └── NotAllowedError        a local user may not change the agent (shelving: not in its group)
"""

from __future__ import annotations

from agent.contract.errors import RobotPMError


class ModelError(RobotPMError):
    """A model that cannot be used."""


class ModelLoadError(ModelError):
    """A model file is missing or onnxruntime refused to load it."""


class ModelRejectedError(ModelError):
    """A model was refused by verification: signature, static checks or golden test."""


class IngestError(RobotPMError):
    """A log source cannot be followed."""


class WatchError(RobotPMError):
    """A directory cannot be watched for changes the way the configuration asks."""


class StateError(RobotPMError):
    """The local state store (offsets, windows, outbox) is unusable."""


class PublishError(RobotPMError):
    """Alerts cannot be handed to the transport."""


class NotAllowedError(RobotPMError):
    """A local user may not change the running agent (e.g. shelve): not root, not in its group."""
