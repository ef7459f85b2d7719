"""Scheduled jobs: each runs on exactly one replica per period, taken by a lease in the
database (table `scheduled_job`)."""

from relaypacs.scheduler.service import Job, Scheduler

__all__ = ["Job", "Scheduler"]
