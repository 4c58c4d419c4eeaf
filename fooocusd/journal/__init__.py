"""The durable journal: a SQLite state machine for inputs, jobs, outputs and their history."""

from fooocusd.journal.journal import (
    DEFAULT_MAX_CRASHES,
    Journal,
    JournalError,
    JournalNotReady,
    OutputNameTaken,
)
from fooocusd.journal.rows import (
    TERMINAL_JOB_STATES,
    EventRow,
    FileRole,
    InputFileRow,
    InputRow,
    InputState,
    JobRow,
    JobState,
    Outcome,
    OutputRow,
    OutputState,
    RefusalRow,
    RetryPlan,
)
from fooocusd.journal.schema import SCHEMA_VERSION
from fooocusd.journal.space import JournalFull

__all__ = [
    "DEFAULT_MAX_CRASHES",
    "SCHEMA_VERSION",
    "TERMINAL_JOB_STATES",
    "EventRow",
    "FileRole",
    "InputFileRow",
    "InputRow",
    "InputState",
    "JobRow",
    "JobState",
    "Journal",
    "JournalError",
    "JournalFull",
    "JournalNotReady",
    "Outcome",
    "OutputNameTaken",
    "OutputRow",
    "OutputState",
    "RefusalRow",
    "RetryPlan",
]
