"""Simulated city devices: behaviour models, firmware faults and an MQTT fleet runner."""

from firmware_sim.clock import SimClock
from firmware_sim.errors import BrokerError, ScenarioError, SimError
from firmware_sim.fleet import Fleet, SimDevice, build_fleet
from firmware_sim.generator import MessageKind, SimMessage, messages
from firmware_sim.link import BrokerAddress, parse_broker_url
from firmware_sim.profiles import traffic_level
from firmware_sim.runner import FleetRunner, Mode, RunStats
from firmware_sim.scenario import (
    Scenario,
    default_scenario,
    load_scenario,
    parse_scenario,
    scale_scenario,
    shipped_scenario,
)
from firmware_sim.sun import SunTimes, sun_times

__all__ = [
    "BrokerAddress",
    "BrokerError",
    "Fleet",
    "FleetRunner",
    "MessageKind",
    "Mode",
    "RunStats",
    "Scenario",
    "ScenarioError",
    "SimClock",
    "SimDevice",
    "SimError",
    "SimMessage",
    "SunTimes",
    "build_fleet",
    "default_scenario",
    "load_scenario",
    "messages",
    "parse_broker_url",
    "parse_scenario",
    "scale_scenario",
    "shipped_scenario",
    "sun_times",
    "traffic_level",
]
