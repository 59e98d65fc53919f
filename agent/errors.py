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
     │    ├── ModelRejectedError  verification refused it (signature, checks, golden test)
     │    ├── ModelStoreError   the model store cannot take a model (quota, I/O)
     │    └── FetchError        a model could not be fetched into the store
     │         ├── FetchRefusedError  the bundle or its announcement breaks a rule: not retried
     │         └── FetchFailedError   it did not work this time (network, server): retried
     ├── IngestError            a log source cannot be followed (missing directory, I/O)
     ├── WatchError             a directory cannot be watched for changes as configured
     ├── StateError             the agent's local state store is unusable
     │    ├── DiskFullError     no space left for it (waits, never deletes anything)
     │    └── StateDamagedError the file is not a sound SQLite database (moved aside)
     ├── PublishError           alerts cannot be handed to the transport
     ├── NotAllowedError        a local user may not change the agent (shelving: not in its group)
     └── StartAbandoned         a stop came while the start was waiting (for disk space)
"""

from __future__ import annotations

from agent.contract.errors import RobotPMError


class ModelError(RobotPMError):
    """A model that cannot be used."""


class ModelLoadError(ModelError):
    """A model file is missing or onnxruntime refused to load it."""


class ModelRejectedError(ModelError):
    """A model was refused by verification: signature, static checks or golden test."""


class ModelStoreError(ModelError):
    """The model store cannot take a model: over its quota, or the disk refused a write."""


class FetchError(ModelError):
    """A model could not be fetched into the store."""


class FetchRefusedError(FetchError):
    """The bundle or its announcement breaks a rule: not retried."""


class FetchFailedError(FetchError):
    """The download did not work this time (network, server, stale copy): retried with back-off."""


class IngestError(RobotPMError):
    """A log source cannot be followed."""


class WatchError(RobotPMError):
    """A directory cannot be watched for changes the way the configuration asks."""


class StateError(RobotPMError):
    """The local state store (offsets, windows, outbox) is unusable."""


class DiskFullError(StateError):
    """The state store cannot be written: its file system is full (or over quota)."""


class StateDamagedError(StateError):
    """The state file is not a sound SQLite database (garbage header, truncated, malformed)."""


class PublishError(RobotPMError):
    """Alerts cannot be handed to the transport."""


class NotAllowedError(RobotPMError):
    """A local user may not change the running agent (e.g. shelve): not root, not in its group."""


class StartAbandoned(RobotPMError):
    """A stop was requested while the start was waiting (e.g. for disk space)."""
