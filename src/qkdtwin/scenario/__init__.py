"""Scenarios: application pairs asking a deployed lab for keys, with faults injected at given
moments, and the check that both applications of every pair got identical keys.

:mod:`qkdtwin.scenario.model` (the file format), :mod:`qkdtwin.scenario.runner` (the run),
:mod:`qkdtwin.scenario.faults` (fault injection), :mod:`qkdtwin.scenario.report` (the table),
:mod:`qkdtwin.scenario.cli` (``qkdtwin scenario LAB FILE``).
"""

from qkdtwin.scenario.model import Scenario, ScenarioError, load_scenario, parse_scenario

__all__ = ["Scenario", "ScenarioError", "load_scenario", "parse_scenario"]
