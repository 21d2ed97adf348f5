"""Fleets: staged rollout of registered versions to edge devices, judged by what the devices measure."""

from pipeline.fleet.schema import Fleet, FleetError, list_fleets, load_fleet

__all__ = ["Fleet", "FleetError", "list_fleets", "load_fleet"]
