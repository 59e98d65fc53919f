"""The edge contract shared by the agent and the trainer.

Records (how sensor lines are read), features (one numpy implementation for
batch and streaming), the model manifest, alert messages and the MQTT topic tree.
"""

from agent.contract.alerts import (
    ALERT_SCHEMA_VERSION,
    AlertEvent,
    AlertState,
    ChannelContribution,
    FeatureContribution,
    Heartbeat,
    ModelRef,
    Presence,
    WindowRef,
    derive_event_id,
)
from agent.contract.features import (
    ALL_STATISTICS,
    CompletedWindows,
    FeatureSpec,
    FeaturizerState,
    StreamingFeaturizer,
    batch_features,
    window_statistics,
)
from agent.contract.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    AlertHead,
    FeatureReference,
    GoldenVector,
    ModelManifest,
    OnnxInterface,
    Severity,
    Thresholds,
)
from agent.contract.records import (
    RecordBatch,
    RecordParser,
    RecordSchema,
    RejectedLine,
    format_csv_line,
    parse_timestamp,
)
from agent.contract.topics import RobotTopics, model_announcements, subscription

__all__ = [
    "ALERT_SCHEMA_VERSION",
    "ALL_STATISTICS",
    "MANIFEST_FILE",
    "MODEL_FILE",
    "SIGNATURE_FILE",
    "AlertEvent",
    "AlertHead",
    "AlertState",
    "ChannelContribution",
    "CompletedWindows",
    "FeatureContribution",
    "FeatureReference",
    "FeatureSpec",
    "FeaturizerState",
    "GoldenVector",
    "Heartbeat",
    "ModelManifest",
    "ModelRef",
    "OnnxInterface",
    "Presence",
    "RecordBatch",
    "RecordParser",
    "RecordSchema",
    "RejectedLine",
    "RobotTopics",
    "Severity",
    "StreamingFeaturizer",
    "Thresholds",
    "WindowRef",
    "batch_features",
    "derive_event_id",
    "format_csv_line",
    "model_announcements",
    "parse_timestamp",
    "subscription",
    "window_statistics",
]
