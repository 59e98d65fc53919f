"""File watching: wake a loop when watched files or directories change (inotify, stat poll).

Used by `agent.ingest` (log directories) and `agent.models` (the model store). Knows
nothing about log lines or models: it reports that something changed, and how much a
watched file grew.
"""
