"""The model life cycle on the robot: store, verify, score, watch, fetch, probation, swap.

A model reaches the agent as a version directory in its store (written there by the
fetcher, a technician or a file drop); it is verified before onnxruntime parses a byte,
loaded and golden-tested, shadow-scored on probation, and swapped in at a window boundary.
"""
