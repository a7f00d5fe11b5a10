"""The root error of the firmware simulator and its two kinds."""


class SimError(Exception):
    """Something about the simulated city or its runner is wrong."""


class ScenarioError(SimError):
    """A scenario file cannot be read or does not validate; the message says where and why."""


class BrokerError(SimError):
    """The broker URL is unusable or the broker cannot be reached."""
