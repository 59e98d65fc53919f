"""RobotPM agent: the on-robot daemon that follows sensor logs, scores them and publishes alerts.

The agent package also holds the edge contract (`agent.contract`) shared with the trainer.
It must never import scikit-learn, pandas or the trainer: it is what ships to robots.
"""

__version__ = "0.1.0"
