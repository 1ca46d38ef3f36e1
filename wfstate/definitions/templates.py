"""Rendering templates: Jinja2, sandboxed, undefined names an error (docs/workflows.md).

Four ways to render, one per place a template appears in a definition:

- :func:`render_text` for text (``dir``, ``env`` values, a terminal's ``message``);
- :func:`render_value` for ``with:`` values, where a string that is one placeholder alone
  keeps the value's native type;
- :func:`evaluate` for ``when:`` expressions;
- :func:`render_command` for shell commands, where every value is escaped for the
  quoting context it stands in (see :mod:`wfstate.definitions.shell`).

Every failure is a :class:`~wfstate.exceptions.TemplateError` naming the template; no
raw Jinja2 exception leaves this module. Compiled templates are cached by their text.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from wfstate.definitions import shell
from wfstate.definitions.awf import STATE_FIELD_ALIASES, WORKFLOW_FIELD_ALIASES
from wfstate.exceptions import TemplateError
from wfstate.state import StepResult, StepStatus, StepWatch, WorkflowState

__all__ = [
    "build_context",
    "check_command",
    "check_expression",
    "check_text",
    "check_value",
    "evaluate",
    "render_command",
    "render_text",
    "render_value",
]


class StrictChainableUndefined(jinja2.ChainableUndefined, jinja2.StrictUndefined):
    """Undefined names fail when used, but ``a.b.c is defined`` is simply false.

    ``states.publish.output.url is defined`` must work before ``publish`` ran: plain
    StrictUndefined would fail on ``.output`` of the missing ``publish``.
    """

    __slots__ = ()


class _Environment(SandboxedEnvironment):
    """``inputs.items`` is the input called ``items``, not the dict's method.

    Jinja2 tries attributes before keys; our names are all dict keys (inputs, step
    results, ``call`` outputs), so keys win for mappings.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping):
            try:
                return obj[attribute]
            except (KeyError, TypeError):
                pass
        return super().getattr(obj, attribute)


def _make_env() -> SandboxedEnvironment:
    env = _Environment(
        undefined=StrictChainableUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters["_shq"] = shell.escape
    # The one escape hatch of command quoting (see wfstate.definitions.shell).
    env.filters["shell_raw"] = shell.shell_raw
    return env


_env = _make_env()

# One placeholder alone, with nothing around it but whitespace.
_SINGLE_PLACEHOLDER = re.compile(r"^\s*\{\{-?((?:(?!\{\{|\}\}|\{%|%\}).)*?)-?\}\}\s*$", re.DOTALL)


def _short(template: str) -> str:
    text = template if len(template) <= 120 else template[:117] + "..."
    return repr(text)


_UNDEFINED_ATTR = re.compile(r"has no attribute '([^']+)'|^'([^']+)' is undefined")


def _undefined_name(exc: jinja2.UndefinedError, template: str) -> str:
    """``'inputs.tga'`` rather than Jinja2's ``'dict object' has no attribute 'tga'``."""
    message = exc.message or str(exc)
    match = _UNDEFINED_ATTR.search(message)
    if not match:
        return f"({message})"
    name = match.group(1) or match.group(2)
    dotted = re.search(r"[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*\." + re.escape(name) + r"\b", template)
    return repr(dotted.group(0)) if dotted else repr(name)


def _fail(exc: Exception, template: str, what: str = "template") -> TemplateError:
    if isinstance(exc, TemplateError):
        return exc
    if isinstance(exc, jinja2.UndefinedError):
        detail = f"undefined name {_undefined_name(exc, template)}"
    elif isinstance(exc, jinja2.TemplateSyntaxError):
        detail = f"syntax error: {exc.message}"
    elif isinstance(exc, jinja2.exceptions.SecurityError):
        detail = f"not allowed in the sandbox: {exc}"
    else:
        detail = f"{type(exc).__name__}: {exc}"
    return TemplateError(f"{what} {_short(template)}: {detail}", template=template)


# --- compilation (cached; also used at load time to reject bad syntax) ------------------


@functools.lru_cache(maxsize=1024)
def _compile_text(template: str) -> jinja2.Template:
    try:
        return _env.from_string(template)
    except jinja2.TemplateError as exc:
        raise _fail(exc, template) from None


@functools.lru_cache(maxsize=1024)
def _compile_command(template: str) -> jinja2.Template:
    # Parsed first (whitespace control is applied by the parser), each placeholder
    # placed in its shell context on the tree, then compiled from the tree.
    try:
        tree = _env.parse(template)
    except jinja2.TemplateError as exc:
        raise _fail(exc, template, "command") from None
    try:
        shell.annotate(tree)
    except shell.CommandRefused as exc:
        raise TemplateError(f"command {_short(template)}: {exc}", template=template) from None
    try:
        code = _env.compile(tree)
        return _env.template_class.from_code(_env, code, _env.make_globals(None), None)
    except jinja2.TemplateError as exc:
        raise _fail(exc, template, "command") from None


@functools.lru_cache(maxsize=1024)
def _compile_expression(expression: str) -> Callable[..., Any]:
    try:
        return _env.compile_expression(expression, undefined_to_none=False)
    except jinja2.TemplateError as exc:
        raise _fail(exc, expression, "expression") from None


def check_text(template: str) -> None:
    """Raises TemplateError if ``template`` is not valid Jinja2."""
    _compile_text(template)


def check_command(template: str) -> None:
    """Raises TemplateError if ``template`` is not a valid command template."""
    _compile_command(template)


def check_expression(expression: str) -> None:
    """Raises TemplateError if ``expression`` is not a valid Jinja2 expression."""
    _compile_expression(expression)


def check_value(value: Any) -> None:
    """Raises TemplateError if any string inside ``value`` is not a valid template."""
    if isinstance(value, str):
        single = _SINGLE_PLACEHOLDER.match(value)
        if single:
            _compile_expression(single.group(1))
        else:
            _compile_text(value)
    elif isinstance(value, Mapping):
        for item in value.values():
            check_value(item)
    elif isinstance(value, list | tuple):
        for item in value:
            check_value(item)


# --- context --------------------------------------------------------------------------

_VISIBLE_STEP_STATUSES = (StepStatus.COMPLETED, StepStatus.FAILED)

_CONTEXT_KEY = attrgetter("status", "completed_at")


class ContextCache:
    """The ``states`` of the last context built for one run, and what it was built from.

    The executor keeps one per run: building the fields of every finished step at every
    step was a cost that grew with the run, and so was even looking at every step in
    Python. Only the steps whose result object, status or ``completed_at`` changed since
    the last build are looked at (a :class:`StepWatch` finds them in C) and rebuilt.
    """

    __slots__ = ("states", "watch")

    def __init__(self) -> None:
        self.watch = StepWatch(_CONTEXT_KEY, by_object=True)
        self.states: dict[str, dict[str, Any]] = {}


def _step_fields(step: StepResult) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "output": step.output,
        "stderr": step.stderr,
        "exit_code": step.exit_code,
        "status": str(step.status),
        "attempt": step.attempt,
        "error": step.error,
    }
    for alias, field in STATE_FIELD_ALIASES.items():
        fields[alias] = fields[field]
    return fields


def _visible_states(state: WorkflowState, cache: ContextCache | None) -> dict[str, dict[str, Any]]:
    """``states`` of the context: each completed or failed step's fields, in the order
    of the document's ``states``."""
    steps = state.states
    if cache is None:
        return {
            name: _step_fields(step)
            for name, step in steps.items()
            if step.status in _VISIBLE_STEP_STATUSES
        }
    watch, known = cache.watch, cache.states
    changed = watch.changed(steps)
    if watch.appended:
        names = watch.names
        # Where the last visible step stands: a step made visible now keeps the
        # document's order only by coming after it (parallel branches end in any order).
        last = names.index(next(reversed(known))) if known else -1
        for name in changed:
            step = steps[name]
            if step.status not in _VISIBLE_STEP_STATUSES:
                known.pop(name, None)
                continue
            if name not in known:
                try:
                    last = names.index(name, last + 1)
                except ValueError:
                    break  # before a visible one: rebuilt in order below
            known[name] = _step_fields(step)
        else:
            return dict(known)
    # Steps went or were renamed, or one became visible before another: in order again.
    fresh = set(changed)
    cache.states = known = {
        name: known[name] if name in known and name not in fresh else _step_fields(step)
        for name, step in steps.items()
        if step.status in _VISIBLE_STEP_STATUSES
    }
    return dict(known)


def build_context(state: WorkflowState, cache: ContextCache | None = None) -> dict[str, Any]:
    """The names templates see: ``inputs``, ``states`` and ``workflow``.

    ``states`` holds each completed or failed step with its snake_case fields and awf's
    PascalCase aliases (``Output``, ``Stderr``, ``ExitCode``, ``Status``).

    ``cache``, a :class:`ContextCache` the caller keeps for one run (the executor does),
    saves rebuilding the fields of every finished step at every step (a cost that grows
    with the run): a step's fields are reused while its result is the same object with
    the same status and ``completed_at``. The executor never changes a finished result
    in place (a step run again gets a new one) and builds contexts under the lock its
    writers hold, so a reused entry is what a rebuild would give. Treat the fields as
    read-only.
    """
    states = _visible_states(state, cache)
    workflow: dict[str, Any] = {
        "id": state.workflow_id,
        "name": state.workflow_name,
        "version": state.workflow_version,
        "duration": (state.duration_ms() or 0) / 1000,
    }
    for alias, field in WORKFLOW_FIELD_ALIASES.items():
        workflow[alias] = workflow[field]
    from wfstate.secrets import open_inputs

    # Secret inputs are opened here, for the step only (wfstate.secrets).
    return {"inputs": open_inputs(state.inputs), "states": states, "workflow": workflow}


# --- rendering --------------------------------------------------------------------------


def render_text(template: str, context: Mapping[str, Any]) -> str:
    """Render ``template`` as text.

    Raises:
        TemplateError: bad syntax, an undefined name, a sandbox violation, or any error
            raised while rendering.
    """
    compiled = _compile_text(template)
    try:
        return compiled.render(context)
    except Exception as exc:
        raise _fail(exc, template) from None


def _evaluate_raw(expression: str, context: Mapping[str, Any], template: str) -> Any:
    compiled = _compile_expression(expression)
    try:
        value = compiled(**context)
    except Exception as exc:
        raise _fail(exc, template, "expression") from None
    if isinstance(value, jinja2.Undefined):
        try:
            str(value)  # StrictUndefined raises, naming what was missing
        except jinja2.UndefinedError as exc:
            raise _fail(exc, template, "expression") from None
    return value


def render_value(value: Any, context: Mapping[str, Any]) -> Any:
    """Render the strings inside ``value`` (recursively through dicts and lists).

    A string that is one placeholder alone (``"{{ inputs.dry_run }}"``) becomes the
    value itself, with its type; any other string is rendered as text.

    Raises:
        TemplateError: as :func:`render_text`.
    """
    if isinstance(value, str):
        single = _SINGLE_PLACEHOLDER.match(value)
        if single:
            return _evaluate_raw(single.group(1), context, value)
        if "{" not in value:
            return value
        return render_text(value, context)
    if isinstance(value, Mapping):
        return {key: render_value(item, context) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [render_value(item, context) for item in value]
    return value


def evaluate(expression: str, context: Mapping[str, Any]) -> bool:
    """The truth of a ``when:`` expression (``inputs.n > 3``, ``x is defined``).

    Raises:
        TemplateError: bad syntax, or an undefined name used other than by ``is defined``.
    """
    value = _evaluate_raw(expression, context, expression)
    try:
        return bool(value)
    except Exception as exc:
        raise _fail(exc, expression, "expression") from None


def render_command(template: str, context: Mapping[str, Any]) -> str:
    """Render a shell command; each interpolated value is one literal shell word.

    The rendered text of every placeholder is escaped for the quoting context it
    stands in (unquoted, ``"..."``, ``'...'``, a comment), whatever filters made it
    (``| tojson``, ``| e`` and ``| safe`` included); only ``{{ x | shell_raw }}``
    inserts a trusted fragment as it is.

    Raises:
        TemplateError: as :func:`render_text`, or a value holds a NUL byte.
    """
    compiled = _compile_command(template)
    try:
        return compiled.render(context)
    except Exception as exc:
        raise _fail(exc, template, "command") from None
