"""The one exception tree of the trainer.

Every error the trainer raises on purpose derives from `TrainerError`; the CLI
turns any of them into a one-line message and a non-zero exit code. Errors from
scikit-learn, skl2onnx, onnxruntime or SQLAlchemy are translated at the module
that calls them.

    TrainerError
     ├── DataError            input data that cannot be used (missing file/column, empty, no labels)
     │    └── SourceError     a data source that cannot be reached or read (file, database)
     ├── TrainingError        no model could be fitted or selected
     ├── ExportError          the model could not be exported to ONNX
     │    └── ParityError     the ONNX graph disagrees with scikit-learn beyond tolerance
     ├── RegistryError        the model registry is missing, inconsistent or refuses an operation
     │    └── GateError       a challenger did not beat the champion
     └── SigningError         a key or model that cannot be signed (trainer.signing)
"""

from __future__ import annotations


class TrainerError(Exception):
    """Base class of every error the trainer raises on purpose."""

    exit_code: int = 1


class DataError(TrainerError):
    """Input data that cannot be used; the message names the file or column."""


class SourceError(DataError):
    """A data source (file, directory, database URL) that cannot be reached or read."""


class TrainingError(TrainerError):
    """No model could be fitted or selected."""


class ExportError(TrainerError):
    """The model could not be exported to ONNX."""


class ParityError(ExportError):
    """The ONNX graph's outputs differ from scikit-learn's beyond tolerance; nothing is written."""


class RegistryError(TrainerError):
    """The model registry is missing, inconsistent, or refuses an operation."""


class GateError(RegistryError):
    """The challenger did not beat the champion on the same held-out data."""
