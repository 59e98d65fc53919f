"""A simulated robot fleet and the end-to-end demo.

`robotpm_sim.simulate` writes sensor logs of 6-axis arms with injected faults and their
ground truth (numpy only); `robotpm-sim` is its command line; `robotpm_sim.demo` runs the
simulator, the agent with its bundled model and an MQTT subscriber together. Tests,
benchmarks and the trainer's bundled-model build use the simulator; nothing on a robot does.
"""
