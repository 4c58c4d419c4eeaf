"""Intake: find files dropped into the inbox, wait until they are complete, pair them, claim them.

Data flow: ``InboxWatcher.poll()`` → ``Ready`` files → ``Pairer`` → ``Drop`` → the journal claims
each part with ``move_durably`` and calls ``InboxWatcher.forget``.
"""

from fooocusd.intake.claim import fsync_dir, move_durably, move_to_unique, unique_destination
from fooocusd.intake.ignore import ACCEPTED_TYPES_TEXT, Kind, Verdict, classify_dir, classify_name
from fooocusd.intake.layout import assert_folders_disjoint
from fooocusd.intake.mounts import PollingDecision, decide_polling
from fooocusd.intake.pairing import Drop, Pairer
from fooocusd.intake.stability import FileStat, StabilityTracker
from fooocusd.intake.watcher import InboxWatcher, Ready

__all__ = [
    "ACCEPTED_TYPES_TEXT",
    "Drop",
    "FileStat",
    "InboxWatcher",
    "Kind",
    "Pairer",
    "PollingDecision",
    "Ready",
    "StabilityTracker",
    "Verdict",
    "assert_folders_disjoint",
    "classify_dir",
    "classify_name",
    "decide_polling",
    "fsync_dir",
    "move_durably",
    "move_to_unique",
    "unique_destination",
]
