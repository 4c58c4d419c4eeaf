"""The journal's tables and how an existing database is brought up to date.

The schema version lives in ``PRAGMA user_version``. Each migration is a list of statements run
in one ``BEGIN IMMEDIATE`` transaction together with the version bump, so a crash mid-migration
leaves the previous version intact, and two processes opening a fresh file never both migrate.
Add a new migration by appending to ``MIGRATIONS``; never edit a released one.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fooocusd.errors import ConfigError

_V1: tuple[str, ...] = (
    """
    CREATE TABLE inputs (
        id        INTEGER PRIMARY KEY,
        key       TEXT    NOT NULL UNIQUE,
        relpath   TEXT    NOT NULL,
        sha256    TEXT    NOT NULL,
        size      INTEGER NOT NULL CHECK (size >= 0),
        state     TEXT    NOT NULL CHECK (state IN
                    ('claiming', 'claimed', 'finishing', 'finished', 'reopening', 'abandoned')),
        created   REAL    NOT NULL,
        updated   REAL    NOT NULL,
        final_dir TEXT,
        error     TEXT
    )
    """,
    "CREATE INDEX inputs_by_sha256 ON inputs (sha256)",
    "CREATE INDEX inputs_by_state ON inputs (state)",
    "CREATE INDEX inputs_by_relpath ON inputs (relpath)",
    """
    CREATE TABLE input_files (
        id           INTEGER PRIMARY KEY,
        input_id     INTEGER NOT NULL REFERENCES inputs (id) ON DELETE CASCADE,
        role         TEXT    NOT NULL CHECK (role IN ('spec', 'image', 'mask')),
        source_path  TEXT    NOT NULL,
        claimed_path TEXT    NOT NULL,
        final_path   TEXT,
        UNIQUE (input_id, role)
    )
    """,
    """
    CREATE TABLE jobs (
        id             INTEGER PRIMARY KEY,
        input_id       INTEGER NOT NULL REFERENCES inputs (id) ON DELETE CASCADE,
        seq            INTEGER NOT NULL CHECK (seq >= 0),
        spec_json      TEXT    NOT NULL,
        priority       INTEGER NOT NULL DEFAULT 0,
        state          TEXT    NOT NULL CHECK (state IN
                         ('claiming', 'queued', 'running', 'done', 'failed', 'cancelled')),
        attempts       INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        crashes        INTEGER NOT NULL DEFAULT 0 CHECK (crashes >= 0),
        not_before     REAL    NOT NULL DEFAULT 0,
        lease_owner    TEXT,
        lease_expires  REAL,
        progress_step  INTEGER NOT NULL DEFAULT 0,
        progress_total INTEGER NOT NULL DEFAULT 0,
        error          TEXT,
        created        REAL    NOT NULL,
        updated        REAL    NOT NULL,
        started        REAL,
        finished       REAL,
        UNIQUE (input_id, seq)
    )
    """,
    # The claim query walks this index in order and stops at the first job whose time has come;
    # it also serves the per-state counts of ``status``.
    "CREATE INDEX jobs_by_state_priority ON jobs (state, priority DESC, id)",
    "CREATE INDEX jobs_by_input ON jobs (input_id)",
    """
    CREATE TABLE outputs (
        id          INTEGER PRIMARY KEY,
        job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        image_index INTEGER NOT NULL CHECK (image_index >= 0),
        path        TEXT    NOT NULL UNIQUE,
        state       TEXT    NOT NULL CHECK (state IN ('planned', 'complete')),
        sha256      TEXT,
        created     REAL    NOT NULL,
        completed   REAL,
        UNIQUE (job_id, image_index)
    )
    """,
    """
    CREATE TABLE events (
        id       INTEGER PRIMARY KEY,
        ts       REAL    NOT NULL,
        input_id INTEGER REFERENCES inputs (id) ON DELETE SET NULL,
        job_id   INTEGER REFERENCES jobs (id) ON DELETE SET NULL,
        kind     TEXT    NOT NULL,
        detail   TEXT    NOT NULL DEFAULT ''
    )
    """,
    "CREATE INDEX events_by_input ON events (input_id, id)",
    "CREATE INDEX events_by_job ON events (job_id, id)",
)

# Files a job names by path ("named": moved into the claim; "shared": copied, because other job
# files waiting in the inbox name it too) may be several per input: unique by claimed path instead.
_V2: tuple[str, ...] = (
    """
    CREATE TABLE input_files_v2 (
        id           INTEGER PRIMARY KEY,
        input_id     INTEGER NOT NULL REFERENCES inputs (id) ON DELETE CASCADE,
        role         TEXT    NOT NULL CHECK (role IN ('spec', 'image', 'mask', 'named', 'shared')),
        source_path  TEXT    NOT NULL,
        claimed_path TEXT    NOT NULL,
        final_path   TEXT,
        UNIQUE (input_id, claimed_path)
    )
    """,
    "INSERT INTO input_files_v2 (id, input_id, role, source_path, claimed_path, final_path)"
    " SELECT id, input_id, role, source_path, claimed_path, final_path FROM input_files",
    "DROP TABLE input_files",
    "ALTER TABLE input_files_v2 RENAME TO input_files",
)

# Files refused at intake (never a job): where each went in failed/, so that `fooocusd retry` can
# put them back in the inbox under the names they came with.
_V3: tuple[str, ...] = (
    """
    CREATE TABLE refusals (
        id       INTEGER PRIMARY KEY,
        ts       REAL    NOT NULL,
        relpath  TEXT    NOT NULL,
        files    TEXT    NOT NULL,
        returned REAL
    )
    """,
    "CREATE INDEX refusals_waiting ON refusals (returned, id)",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, _V2, _V3)
"""``MIGRATIONS[n]`` takes a database from version ``n`` to ``n + 1``."""

SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def check_not_newer(version: int, db_path: Path) -> None:
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"the journal {db_path} has schema version {version}, "
            f"but this fooocusd only understands up to version {SCHEMA_VERSION}",
            hint="it was written by a newer fooocusd: upgrade fooocusd,"
            " or point paths.state at another folder",
            where=str(db_path),
        )


def migrate(conn: sqlite3.Connection, db_path: Path) -> int:
    """Bring the database to ``SCHEMA_VERSION``; returns the version it had before.

    ``conn`` must be in autocommit mode (``isolation_level=None``).
    """
    current = schema_version(conn)
    check_not_newer(current, db_path)
    if current == SCHEMA_VERSION:
        return current
    conn.execute("BEGIN IMMEDIATE")
    try:
        before = schema_version(conn)  # another process may have migrated meanwhile
        check_not_newer(before, db_path)
        for version in range(before, SCHEMA_VERSION):
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
        # PRAGMA arguments cannot be bound; the value is our own integer.
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return before
