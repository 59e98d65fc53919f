"""A simulated robot fleet and the end-to-end demo.

The simulator writes sensor logs of 6-axis arms with injected faults and their ground truth
(numpy only): `robotpm_sim.records` (the record's columns), `robotpm_sim.faults` (fault modes,
schedules, ground truth), `robotpm_sim.arm` (one arm's physics), `robotpm_sim.formatting`
(record and truth lines as text), `robotpm_sim.rotating` (a log rotated by size),
`robotpm_sim.fleet` (whole histories of a fleet) and `robotpm_sim.live` (a log written in real
time). `robotpm-sim` is its command line (`robotpm_sim.cli`); `robotpm_sim.demo` runs the
simulator, the agent with its bundled model and an MQTT subscriber together. Tests, benchmarks
and the trainer's bundled-model build use the simulator; nothing on a robot does.
"""
