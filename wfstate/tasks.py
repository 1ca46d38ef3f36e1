"""Background execution through Django's Tasks API (docs/scaling.md).

``django.tasks`` on Django 6.x, the ``django-tasks`` backport on 5.2. The backend is
the host's choice (``TASKS`` setting; ``WFSTATE["TASK_BACKEND"]`` names the alias): the
demo uses the database backend and its ``db_worker``; several hosts use RQ over Redis.

A task only carries the run's id. It takes the run lock without waiting, so a duplicate
delivery, or a run that ``recover_workflows`` picked up meanwhile, ends as "already
running" instead of a second executor.
"""

from __future__ import annotations

import logging
from datetime import datetime

try:  # Django 6.0+
    from django.tasks import task  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # Django 5.2: the backport
    from django_tasks import task  # type: ignore[no-redef]

from wfstate import runs
from wfstate.conf import conf
from wfstate.exceptions import RunLocked

logger = logging.getLogger("wfstate.tasks")


@task()
def execute_workflow(workflow_id: str) -> str:
    """Execute (or go on with) a run; returns its final status, or "already running"."""
    try:
        return str(runs.execute(workflow_id).status)
    except RunLocked as exc:
        logger.info("run %s not executed: %s", workflow_id, exc)
        return "already running"


def enqueue_execution(workflow_id: str) -> str:
    """Hand a run to the configured task backend; returns the task result's id."""
    result = execute_workflow.using(backend=conf.TASK_BACKEND, queue_name=conf.TASK_QUEUE).enqueue(
        workflow_id
    )
    return str(result.id)


def schedule_wake(workflow_id: str, run_after: datetime) -> str | None:
    """Enqueue a parked run's execution for ``run_after`` (an aware time): how a sleep
    or a wait's timeout ends. Returns the task result's id.

    A backend that cannot defer (the ImmediateBackend, for one) would run it at
    once, to find it not yet due and park it again; instead nothing is enqueued, this
    is logged, and None returned: ``recover_workflows`` wakes the run once it is due.
    """
    task = execute_workflow.using(backend=conf.TASK_BACKEND, queue_name=conf.TASK_QUEUE)
    if not task.get_backend().supports_defer:
        logger.warning(
            "run %s waits until %s, but task backend %r cannot defer a task (run_after): "
            "no wake-up is scheduled; run recover_workflows (e.g. from cron) to wake it",
            workflow_id,
            run_after.isoformat(),
            conf.TASK_BACKEND,
        )
        return None
    result = task.using(run_after=run_after).enqueue(workflow_id)
    return str(result.id)
