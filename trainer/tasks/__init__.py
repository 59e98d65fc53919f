"""The trainer's tasks, one module each: failure classification, anomaly detection, remaining life.

Each module says only what its task does differently (how it fits, calibrates and
evaluates, what its alert heads mean) as a `trainer.run.TaskSteps`; the shared run
scaffold `trainer.run.run_task` prepares the windows, exports, builds the manifest and
stores the version.
"""
