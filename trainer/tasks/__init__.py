"""The trainer's tasks, one module each: failure classification, anomaly detection, remaining life.

Each task runs the stages of `trainer.stages` on a data set and stores the result in the
registry as one model version.
"""
