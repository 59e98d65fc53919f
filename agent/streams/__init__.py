"""One sensor stream inside the daemon: parse → (resample) → windows → features → score → alert policy.

`agent.ingest` supplies a stream's lines; this package turns them into scored windows and
alert events (`pipeline`, driven by `runner`), names the channels that drove each alert's
score (`attribution`), measures the stream's sample rate against the model's and resamples
it when configured (`sampling`), and watches the stream's features for drift (`drift`).
"""
