"""RobotPM central trainer: simulated and real data to signed ONNX models.

Imports nothing heavy at package level: scikit-learn is imported by the stages that need it,
so the simulator (`robotpm_sim`) runs with numpy alone.
"""
