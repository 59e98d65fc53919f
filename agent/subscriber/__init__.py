"""The operators' alert subscriber, `robotpm-alerts`: follow robots, a site or the fleet over MQTT.

Runs beside a broker, not on the robot: the daemon never imports it. It reads the same
edge contract (alert, heartbeat and presence messages) the agent publishes.
"""
