"""The errors of the forwarding domain. None reaches HTTP: they steer the worker."""

from __future__ import annotations


class LeaseLost(Exception):
    """Another worker owns the job now (its lease token moved on): stop, write nothing more."""
