"""Retention: prune finished runs that are older than a policy says (issue 14).

What is removed, and in which order, is the point of this module:

* Candidates come from the index (one query, fast), and each is **confirmed from its
  file** under its run lock, taken without waiting: the file wins. A row that says
  ``completed`` over a file that says ``running`` is never pruned (its row is re-synced).
  A run whose lock is held, a run that is ``pending``, ``running`` or ``waiting``, and a
  corrupt file (``doctor``'s business) are never pruned.
* The **file goes first, the row after**: ``store.delete()`` removes the state file, its
  side files (outputs, cancel marker) and its lock sidecars; the rows of a batch of
  deleted runs are deleted together afterwards. A kill between the two leaves rows
  without files, which ``doctor --fix`` (and ``sync_workflow_index --prune``) remove.
  A kill inside ``store.delete()`` after the state file is gone leaves side files
  without a state file, which :func:`orphan_side_files` finds and ``doctor --fix``
  removes. Nothing a kill leaves behind is a run that looks alive but is half gone.
* With an archive directory, each run is written to a compressed bundle (see
  :mod:`wfstate.bundles`), durably, before anything of it is removed.

The ``RETENTION`` setting gives the policy by status, and per workflow::

    WFSTATE = {"RETENTION": {
        "completed": "30d", "cancelled": "30d", "failed": "90d",
        "workflows": {"nightly-backup": {"completed": "7d", "failed": None}},
    }}

``None`` (or a missing status) keeps those runs forever.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from django.db.models import Q

from wfstate.exceptions import (
    CorruptState,
    RunLocked,
    RunNotFound,
    StateLocked,
    StillRunning,
    StorageError,
    WFStateError,
)
from wfstate.state import WorkflowState, parse_time
from wfstate.stores.base import StateStore

# Only runs that ended may be pruned: a pending, running or waiting run never is, even
# when a policy or a command line names its status.
PRUNABLE = ("completed", "failed", "cancelled")

# Index rows are fetched, and deleted, this many at a time.
BATCH = 500

_DURATION_PART = re.compile(r"(\d+)\s*(w|d|h|m|s)")
_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}

# Side files younger than this are never taken for orphans: a run being created makes
# its lock sidecar a moment before its state file.
ORPHAN_GRACE = 2.0


class InvalidRetention(WFStateError):
    """A duration or a RETENTION setting that cannot be understood."""

    code = "invalid_retention"
    exit_code = 1


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """``"30d"``, ``"12h"``, ``"1d12h"``, ``"90m"``, ``"3600s"``, ``"2w"`` or seconds.

    Raises:
        InvalidRetention: anything else, or a duration of zero or less.
    """
    if isinstance(text, timedelta):
        value = text
    elif isinstance(text, int | float) and not isinstance(text, bool):
        value = timedelta(seconds=text)
    elif isinstance(text, str):
        compact = text.strip().lower()
        parts = _DURATION_PART.findall(compact)
        if not parts or _DURATION_PART.sub("", compact).strip():
            raise InvalidRetention(
                f"invalid duration {text!r}: use a number and a unit, e.g. 30d, 12h, 90m, 2w"
            )
        value = timedelta(seconds=sum(int(n) * _UNITS[unit] for n, unit in parts))
    else:
        raise InvalidRetention(f"invalid duration {text!r}: use e.g. '30d'")
    if value <= timedelta(0):
        raise InvalidRetention(f"invalid duration {text!r}: it must be more than zero")
    return value


@dataclass(frozen=True)
class Policy:
    """How long runs are kept, by status and optionally by workflow.

    ``default[status]`` applies to every workflow; ``workflows[name][status]`` overrides
    it for one workflow (``None`` there keeps that workflow's runs of that status).
    A policy built from a command line has one entry per status and ``only_workflow``.
    """

    default: Mapping[str, timedelta | None] = field(default_factory=dict)
    workflows: Mapping[str, Mapping[str, timedelta | None]] = field(default_factory=dict)
    only_workflow: str | None = None

    @classmethod
    def from_setting(cls, setting: Mapping[str, Any] | None) -> Policy:
        """The policy of ``WFSTATE["RETENTION"]``.

        Raises:
            InvalidRetention: an unknown status, a bad duration, a malformed entry.
        """
        setting = dict(setting or {})
        workflows = setting.pop("workflows", None) or {}
        if not isinstance(workflows, Mapping):
            raise InvalidRetention("RETENTION['workflows'] must map workflow names to policies")
        return cls(
            default=_statuses(setting, "RETENTION"),
            workflows={
                str(name): _statuses(entry, f"RETENTION['workflows'][{name!r}]")
                for name, entry in workflows.items()
            },
        )

    @classmethod
    def from_options(
        cls, older_than: str, statuses: list[str] | None = None, workflow: str | None = None
    ) -> Policy:
        """The policy of ``prune_workflow_runs --older-than D [--status S,..] [--workflow N]``.

        Raises:
            InvalidRetention: a bad duration, or a status that is not a final one.
        """
        age = parse_duration(older_than)
        chosen = statuses or list(PRUNABLE)
        return cls(
            default=_statuses(dict.fromkeys(chosen, age), "--status"),
            only_workflow=workflow,
        )

    @property
    def empty(self) -> bool:
        return not any(self.default.values()) and not any(
            any(entry.values()) for entry in self.workflows.values()
        )

    def max_age(self, workflow_name: str, status: str) -> timedelta | None:
        """How long a run of this workflow that ended with this status is kept (None: always)."""
        if self.only_workflow is not None and workflow_name != self.only_workflow:
            return None
        if status not in PRUNABLE:
            return None
        entry = self.workflows.get(workflow_name)
        if entry is not None and status in entry:
            return entry[status]
        return self.default.get(status)

    def candidates_q(self, now: datetime) -> Q:
        """The index rows this policy may prune (each is confirmed from its file)."""
        query = Q(pk__in=[])
        named = set(self.workflows)
        for status in PRUNABLE:
            age = self.default.get(status)
            if age is not None:
                q = Q(status=status) & _older(now - age)
                if self.only_workflow is not None:
                    q &= Q(workflow_name=self.only_workflow)
                elif named:
                    q &= ~Q(workflow_name__in=named)
                query |= q
            for name, entry in self.workflows.items():
                if self.only_workflow is not None and name != self.only_workflow:
                    continue
                wf_age = entry.get(status, age)
                if wf_age is not None:
                    query |= Q(status=status, workflow_name=name) & _older(now - wf_age)
        return query


def _older(cutoff: datetime) -> Q:
    return Q(completed_at__lt=cutoff) | Q(completed_at__isnull=True, updated_at__lt=cutoff)


def _statuses(entry: object, where: str) -> dict[str, timedelta | None]:
    if not isinstance(entry, Mapping):
        raise InvalidRetention(f"{where} must map statuses to durations, not {entry!r}")
    out: dict[str, timedelta | None] = {}
    for status, value in entry.items():
        if status not in PRUNABLE:
            raise InvalidRetention(
                f"{where}: {status!r} is not a status that can be pruned "
                f"(only {', '.join(PRUNABLE)}: a run that has not ended is never pruned)"
            )
        out[status] = None if value is None else parse_duration(value)
    return out


def ended_at(state: WorkflowState) -> datetime | None:
    """When a run ended, from its file (``completed_at``, else its last write)."""
    return parse_time(state.completed_at or state.updated_at)


# --- pruning -----------------------------------------------------------------------------


@dataclass
class PruneReport:
    """What a prune did (or, with ``dry_run``, would do)."""

    dry_run: bool = False
    candidates: int = 0
    pruned: list[str] = field(default_factory=list)
    archived: dict[str, str] = field(default_factory=dict)
    # Why candidates were kept: run id -> reason.
    skipped: dict[str, str] = field(default_factory=dict)
    rows_without_file: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "candidates": self.candidates,
            "pruned": len(self.pruned),
            "pruned_ids": self.pruned,
            "archived": self.archived,
            "skipped": self.skipped,
            "rows_without_file": self.rows_without_file,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
        }


def _candidate_ids(policy: Policy, now: datetime) -> Iterator[list[str]]:
    """Batches of candidate ids from the index, by primary key (stable while deleting)."""
    from wfstate.models import WorkflowRun

    query = WorkflowRun.objects.filter(policy.candidates_q(now), corrupt=False)
    last_pk = 0
    while True:
        rows = list(
            query.filter(pk__gt=last_pk).order_by("pk").values_list("pk", "workflow_id")[:BATCH]
        )
        if not rows:
            return
        last_pk = rows[-1][0]
        yield [workflow_id for _, workflow_id in rows]


def _keep_reason(state: WorkflowState, policy: Policy, now: datetime) -> str | None:
    """Why the file says this run must be kept, or None when it may be pruned."""
    status = str(state.status)
    if status not in PRUNABLE:
        return f"the file says {status}"
    age = policy.max_age(state.workflow_name, status)
    if age is None:
        return f"no retention for {state.workflow_name} runs that are {status}"
    ended = ended_at(state)
    if ended is None or ended >= now - age:
        return f"the file says it ended at {state.completed_at or state.updated_at}"
    return None


def prune(
    policy: Policy,
    *,
    store: StateStore | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
    archive_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PruneReport:
    """Remove the runs ``policy`` no longer keeps: file, side files, sidecars, then rows.

    Raises:
        InvalidRetention: an empty policy (it would keep everything: surely a mistake).
        StorageError: the archive directory cannot be made.
    """
    from wfstate.models import WorkflowRun
    from wfstate.stores import get_store

    if policy.empty:
        raise InvalidRetention(
            "no retention to apply: give --older-than, or set WFSTATE['RETENTION']"
        )
    store = store or get_store()
    now = now or datetime.now(UTC)
    report = PruneReport(dry_run=dry_run)
    started = time.perf_counter()
    archive = Path(archive_dir) if archive_dir is not None else None
    if archive is not None and not dry_run:
        try:
            archive.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"could not make the archive directory {archive}: {exc}") from exc
    total = WorkflowRun.objects.filter(policy.candidates_q(now), corrupt=False).count()
    done = 0
    for batch in _candidate_ids(policy, now):
        report.candidates += len(batch)
        gone: list[str] = []  # pruned now, or whose file was already gone
        for workflow_id in batch:
            if _prune_one(store, workflow_id, policy, now, report, dry_run, archive):
                gone.append(workflow_id)
        if not dry_run and gone:
            # The rows go after their files (see the module's docstring).
            WorkflowRun.objects.filter(workflow_id__in=gone).delete()
        done += len(batch)
        if progress is not None:
            progress(done, max(total, done))
    report.seconds = time.perf_counter() - started
    return report


def _prune_one(
    store: StateStore,
    workflow_id: str,
    policy: Policy,
    now: datetime,
    report: PruneReport,
    dry_run: bool,
    archive: Path | None,
) -> bool:
    """Confirm one candidate from its file and remove it; True when its row must go."""
    try:
        if dry_run:
            # No lock taken (that could create a sidecar): a dry run changes nothing.
            if store.run_lock_owner(workflow_id) is not None:
                report.skipped[workflow_id] = "an executor holds its run lock"
                return False
            reason = _keep_reason(store.load(workflow_id), policy, now)
            if reason:
                report.skipped[workflow_id] = reason
                return False
            report.pruned.append(workflow_id)
            return False
        with store.run_lock(workflow_id):
            state = store.load(workflow_id)
            reason = _keep_reason(state, policy, now)
            if reason is None and archive is not None:
                from wfstate import bundles

                target = archive / f"{workflow_id}.tar.gz"
                bundles.export_run(workflow_id, target, store=store)
                report.archived[workflow_id] = str(target)
        if reason:
            report.skipped[workflow_id] = reason
            _resync(workflow_id, state)
            return False
        # The run lock is released first: delete() checks (or takes) it itself.
        store.delete(workflow_id)
    except RunNotFound:
        # A row without a file: the file wins, the row goes (not with --dry-run).
        report.rows_without_file.append(workflow_id)
        return not dry_run
    except (RunLocked, StillRunning):
        report.skipped[workflow_id] = "an executor holds its run lock"
        return False
    except StateLocked:
        report.skipped[workflow_id] = "its write lock is busy"
        return False
    except CorruptState as exc:
        report.skipped[workflow_id] = f"corrupt (doctor --fix quarantines it): {exc}"
        return False
    except WFStateError as exc:
        report.errors[workflow_id] = str(exc)
        return False
    report.pruned.append(workflow_id)
    return True


def _resync(workflow_id: str, state: WorkflowState) -> None:
    """A row that disagreed with its file is rebuilt from it (the file wins)."""
    from wfstate import index

    with contextlib.suppress(Exception):
        index.index_state(state)


def prune_with_settings(**kwargs: Any) -> PruneReport:
    """Apply ``WFSTATE["RETENTION"]`` (the scheduler calls this when it runs).

    Raises:
        InvalidRetention: the setting is malformed or empty.
    """
    from wfstate.conf import conf

    return prune(Policy.from_setting(conf.RETENTION), **kwargs)


# --- orphan side files (what a kill inside store.delete() leaves) -------------------------


def orphan_side_files(store: StateStore, *, grace: float = ORPHAN_GRACE) -> dict[str, list[str]]:
    """Side files of runs that have no state file (``StateStore.orphan_side_files``):
    what a kill inside ``store.delete()`` leaves. Run id -> paths."""
    return store.orphan_side_files(grace=grace)


def remove_orphan_side_files(
    store: StateStore, orphans: Mapping[str, list[str]] | None = None
) -> list[str]:
    """Remove them (``StateStore.remove_orphan_side_files``); returns the run ids."""
    orphans = orphan_side_files(store) if orphans is None else orphans
    return store.remove_orphan_side_files(orphans)
