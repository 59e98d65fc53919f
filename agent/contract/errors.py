"""The root of RobotPM's exception tree, and the errors of the edge contract.

The contract is self-contained: its errors live here, and the agent's own errors
(`agent.errors`) derive from the same root, so a caller can catch everything
RobotPM raises on purpose with `RobotPMError`.

    RobotPMError
     ├── ConfigError            bad configuration: the CLIs exit with code 2
     └── ContractError          data that breaks the edge contract
          ├── RecordError       a sensor line that cannot be parsed or validated
          ├── ManifestError     a model manifest that is malformed or inconsistent
          └── SignatureFormatError  a signed document (signature, certificate) that is malformed
"""

from __future__ import annotations


class RobotPMError(Exception):
    """Base class of every error the agent and the contract raise on purpose.

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


class SignatureFormatError(ContractError):
    """A signed document (a signature file, certificate, revocation list, announcement) that is malformed."""
