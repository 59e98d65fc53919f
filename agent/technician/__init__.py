"""What the field technician and the operations team use at the robot, beside the running agent.

The read side (`robotpm-agent alerts`, `explain`, `status`) reads the agent's state
database read-only and the status file the daemon refreshes; the write side
(`shelve`, `unshelve`) drops request files into the control directory, which the
daemon picks up on its loop. Nothing here talks to the broker. The modules:

* `settings`: the ``[agent.journal]``, ``[agent.shelving]``, ``[agent.control]`` and
  ``[agent.logging]`` config sections;
* `journal` (in `agent.journal`): the local alert journal in the state database;
* `recorder`: the per-stream score history and feature context kept for ``explain``;
* `shelving`: shelves, their requests, the publish gate and its expiry;
* `statusfile`: the status file (written atomically each heartbeat, read by ``status``);
* `views`: the pydantic models of every ``--json`` output (their JSON Schemas are in
  `agent.schemas`);
* `render`: their text form; `commands`: the argparse wiring.

Keep this package's ``__init__`` free of imports: `agent.config` imports `settings`.
"""
