"""Ingestion: follow a stream's log files through rotation and restarts, and quarantine bad lines.

The daemon makes one `StreamFollower` per stream, calls `read` when woken, and
commits `state` together with what it derived from the lines; `restore` resumes
there after a restart. Refused lines (the follower's and the parser's) go to a
`Quarantine`.
"""

from agent.contract.records import RejectedLine
from agent.ingest.follower import LineBlock, StreamFollower
from agent.ingest.quarantine import Quarantine

__all__ = ["LineBlock", "Quarantine", "RejectedLine", "StreamFollower"]
