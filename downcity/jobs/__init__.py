"""Image jobs: submitting one, storing it, scheduling its polls and billing its first success."""

from downcity.jobs.manager import JobManager
from downcity.jobs.record import JobRecord, Progress
from downcity.jobs.schedule import DueIndex, backoff_delay_ms
from downcity.jobs.store import JobStore
from downcity.jobs.submit import submit_image_job

__all__ = [
    "DueIndex",
    "JobManager",
    "JobRecord",
    "JobStore",
    "Progress",
    "backoff_delay_ms",
    "submit_image_job",
]
