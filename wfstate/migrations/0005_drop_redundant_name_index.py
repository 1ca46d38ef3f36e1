"""The single-column index on ``workflow_name`` goes: the (workflow_name, started_at, id)
index of 0004 serves every lookup by name (equality, prefix range, the names' loose
scan), and each row written (a sync writes 100,000) kept one index more up to date.

Only the index is dropped (``DROP INDEX``), found by introspection: ``AlterField``
would rebuild the whole table on SQLite to remove it.
"""

from typing import Any

from django.apps.registry import Apps
from django.db import migrations, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor


def _name_only_indexes(schema_editor: BaseDatabaseSchemaEditor, model: Any) -> list[str]:
    connection = schema_editor.connection
    table = model._meta.db_table
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, table)
    column = model._meta.get_field("workflow_name").column
    return [
        name
        for name, info in constraints.items()
        # PostgreSQL has two: the index and its varchar_pattern_ops twin (``_like``).
        if info["index"]
        and not info["unique"]
        and not info["primary_key"]
        and info["columns"] == [column]
    ]


def drop_index(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    model = apps.get_model("wfstate", "WorkflowRun")
    quote = schema_editor.quote_name
    for name in _name_only_indexes(schema_editor, model):
        schema_editor.execute(
            schema_editor.sql_delete_index
            % {"table": quote(model._meta.db_table), "name": quote(name)}
        )


def create_index(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    model = apps.get_model("wfstate", "WorkflowRun")
    without, with_index = (
        models.CharField(max_length=128, db_index=db_index, verbose_name="workflow")
        for db_index in (False, True)
    )
    for field in (without, with_index):
        field.set_attributes_from_name("workflow_name")
        field.model = model
    schema_editor.alter_field(model, without, with_index)


class Migration(migrations.Migration):
    dependencies = [
        ("wfstate", "0004_list_order_indexes"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="workflowrun",
                    name="workflow_name",
                    field=models.CharField(max_length=128, verbose_name="workflow"),
                ),
            ],
            database_operations=[migrations.RunPython(drop_index, create_index)],
        ),
    ]
