"""RobotPM agent: the on-robot daemon that follows sensor logs, scores them and publishes alerts.

The package is laid out by job (docs/architecture.md draws it):

- `agent.contract`: the edge contract shared with the trainer (records, features, manifest,
  alerts, topics, the config-file loader); it imports nothing else of the agent;
- `agent.filewatch`: inotify and stat-poll file watching, used by ingest and models;
- `agent.ingest`: following a stream's log files through rotation, and quarantine;
- `agent.streams`: one stream's parse → features → score → policy pipeline and its runner;
- `agent.models`: the model life cycle: store, verify, score, watch, fetch, probation, swap;
- `agent.publish`: the outbox's delivery over MQTT and the messages it sends;
- `agent/models/bundled` and `agent/install`: package data, the bundled model and the config template
  an install copies out, and in the wheel the systemd unit too (its source is the top-level
  `systemd/`; README.md, "Install on a robot");
- `agent.subscriber`: the operators' alert subscriber (`robotpm-alerts`), not part of the daemon;
- top-level modules: the daemon's loop and the parts it steps (`startup`, `commits`, `reporting`,
  `reload`), config, state, outbox, policy, seams and their twins.

It must never import scikit-learn, pandas or the trainer: it is what ships to robots.
"""

__version__ = "0.1.0"
