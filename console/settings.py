"""Moved to :mod:`console.config`; this alias keeps ``console/coordinator.py``'s import working
until its import line is switched (issue 16). Import from ``console.config`` instead."""

from console.config.settings import CoordinatorConfig

__all__ = ["CoordinatorConfig"]
