"""The engine: executes a run of a definition, checkpoint by checkpoint, into a store.

Knows nothing of HTTP, argparse or the admin; ``wfstate.runs`` is what faces call.
"""

from wfstate.engine.executor import Executor
from wfstate.engine.resume import mark_cancelled, prepare_resume, resume_target
from wfstate.engine.steps import StepCancelled, StepContext

__all__ = [
    "Executor",
    "StepCancelled",
    "StepContext",
    "mark_cancelled",
    "prepare_resume",
    "resume_target",
]
