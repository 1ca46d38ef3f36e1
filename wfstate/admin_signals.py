"""Answering waiting runs in the admin: who may, and the form a wait step's schema gives.

Who may answer a ``wait`` step (see docs/admin.md, "Waiting runs"): an active staff
user who holds ``wfstate.signal_workflowrun`` (every workflow), or
``wfstate.signal_<workflow name>`` (a permission a host creates for one workflow, on
the WorkflowRun content type), or who belongs to a group the step names in
``assignees:``. Superusers hold every permission.

The form is generated from the step's JSON Schema: an object's properties become
fields (boolean, string or enum, integer, number; anything else a JSON text field),
its ``required`` list the required fields, ``title``/``description`` their label and
help. A schema that is not an object of properties gives one JSON field for the whole
payload. The payload is checked against the schema again by ``wfstate.runs.signal_run``,
so the form is a convenience, never the guard.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from django import forms
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from wfstate.definitions import get_registry
from wfstate.definitions.model import StateDef, WorkflowDefinition
from wfstate.models import WorkflowRun

User = AbstractBaseUser | AnonymousUser

# The inbox reads at most this many waiting rows (newest first): a page, not a report.
INBOX_LIMIT = 500


def can_answer(user: Any, workflow_name: str, sdef: StateDef) -> bool:
    """Whether ``user`` may send the signal a wait step waits for, from the admin."""
    if not (user.is_active and user.is_staff) or sdef.type != "wait":
        return False
    if user.has_perm("wfstate.signal_workflowrun") or user.has_perm(
        f"wfstate.signal_{workflow_name}"
    ):
        return True
    if not sdef.assignees:
        return False
    return bool(user.groups.filter(name__in=sdef.assignees).exists())


class _JSONField(forms.CharField):
    """A value typed as JSON (an object, a list...)."""

    widget = forms.Textarea(attrs={"rows": 3, "cols": 60})

    def to_python(self, value: Any) -> Any:
        text = super().to_python(value)
        if text in self.empty_values:
            return None
        try:
            return json.loads(str(text))
        except ValueError as exc:
            raise forms.ValidationError(f"not valid JSON: {exc}") from None


def _json(text: Any) -> Any:
    return json.loads(str(text))


def _field(name: str, schema: dict[str, Any], required: bool) -> forms.Field:
    label = str(schema.get("title") or name.replace("_", " "))
    help_text = str(schema.get("description") or "")
    kind = schema.get("type")
    common: dict[str, Any] = {"label": label, "help_text": help_text, "required": required}
    if "enum" in schema:
        choices = [(json.dumps(v), str(v)) for v in schema["enum"]]
        if not required:
            choices.insert(0, ("", "—"))
        return forms.TypedChoiceField(choices=choices, coerce=_json, empty_value=None, **common)
    if kind == "boolean":
        # An unticked box is a false answer, not a missing one.
        return forms.BooleanField(**{**common, "required": False})
    if kind == "string":
        return forms.CharField(
            max_length=schema.get("maxLength"),
            min_length=schema.get("minLength"),
            widget=forms.Textarea(attrs={"rows": 2, "cols": 60})
            if not schema.get("maxLength") or schema["maxLength"] > 200
            else None,
            **common,
        )
    if kind == "integer":
        return forms.IntegerField(
            min_value=schema.get("minimum"), max_value=schema.get("maximum"), **common
        )
    if kind == "number":
        return forms.FloatField(
            min_value=schema.get("minimum"), max_value=schema.get("maximum"), **common
        )
    return _JSONField(**common)


def _properties(sdef: StateDef) -> dict[str, Any] | None:
    schema = sdef.schema or {}
    properties = schema.get("properties")
    if schema.get("type", "object") == "object" and isinstance(properties, dict) and properties:
        return properties
    return None


def signal_form(sdef: StateDef, data: Any = None) -> forms.Form:
    """The form for a wait step's payload (bound when ``data`` is given)."""
    fields: dict[str, forms.Field] = {}
    properties = _properties(sdef)
    if properties is None:
        fields["payload"] = _JSONField(
            label="payload",
            required=False,
            help_text="JSON" + (f"; schema: {json.dumps(sdef.schema)}" if sdef.schema else ""),
        )
    else:
        required = set((sdef.schema or {}).get("required") or ())
        for name, schema in properties.items():
            spec = schema if isinstance(schema, dict) else {}
            fields[name] = _field(str(name), spec, name in required)
    form_class = type("SignalForm", (forms.Form,), dict(fields))
    return form_class(data, prefix="wf-signal")  # type: ignore[no-any-return]


def payload_from(sdef: StateDef, form: forms.Form) -> Any:
    """The payload a valid form gives: the object of its fields (empty optional ones
    left out), or the JSON of the single payload field."""
    data = form.cleaned_data
    if _properties(sdef) is None:
        return {} if data.get("payload") is None else data["payload"]
    required = set((sdef.schema or {}).get("required") or ())
    return {
        name: value for name, value in data.items() if name in required or value not in (None, "")
    }


def _definitions(names: Iterable[str]) -> dict[str, WorkflowDefinition | None]:
    registry = get_registry()
    found: dict[str, WorkflowDefinition | None] = {}
    for name in set(names):
        try:
            found[name] = registry.get(name)
        except Exception:  # missing or invalid: nobody can answer from here
            found[name] = None
    return found


def inbox(user: Any) -> list[dict[str, Any]]:
    """The waiting runs whose wait step ``user`` may answer, from the index (newest
    first, at most ``INBOX_LIMIT`` rows read). The row's ``current_state`` names the
    step; the file stays the truth when the form is sent."""
    rows = list(
        WorkflowRun.objects.filter(status="waiting").order_by("-updated_at", "-id")[:INBOX_LIMIT]
    )
    definitions = _definitions(row.workflow_name for row in rows)
    entries = []
    for row in rows:
        definition = definitions.get(row.workflow_name)
        sdef = definition.states.get(row.current_state) if definition else None
        if sdef is not None and can_answer(user, row.workflow_name, sdef):
            entries.append({"row": row, "step": sdef})
    return entries
