"""One sensor stream inside the daemon: parse → windows → features → score → alert policy.

`agent.ingest` supplies a stream's lines; this package turns them into scored windows and
alert events, and watches the stream's features for drift.
"""
