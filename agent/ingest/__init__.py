"""Ingestion: follow a stream's log files through rotation and restarts, and quarantine bad lines.

The daemon makes one `StreamFollower` per stream, calls `read` when woken, and
commits `state` together with what it derived from the lines; `restore` resumes
there after a restart. Refused lines (the follower's and the parser's) go to a
`Quarantine`.

Modules, one job each: `follower` (the stream's files together, the public API),
`discovery` (which files belong, in what order), `identity` (recognising content),
`tracked` (one open file), `rotation` (truncation, copytruncate, copies),
`copies` (the ghosts and pending files rotation keeps, shared by rotation, tracked
and checkpoint), `checkpoint` (the saved position), `parking` (files read to their end, closed: the
open-file bound), `limits` (the process's descriptor limit against that bound),
`refusals` (paths that cannot be followed, and why), `reader` (complete lines out of a
file), `quarantine` (the file of refused lines).
"""

from agent.contract.records import RejectedLine
from agent.ingest.follower import StreamFollower
from agent.ingest.quarantine import Quarantine
from agent.ingest.reader import LineBlock

__all__ = ["LineBlock", "Quarantine", "RejectedLine", "StreamFollower"]
