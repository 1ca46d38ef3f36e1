"""Secret inputs (issue 14, acceptance 6): never in clear outside the step; resume uses them."""

from __future__ import annotations

import io
import tarfile
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.fernet import Fernet
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from tests.helpers import call
from wfstate import secrets
from wfstate.stores import get_store

# transaction=True: the engine indexes from a thread of its own.
pytestmark = pytest.mark.django_db(transaction=True)

OLD_KEY = Fernet.generate_key().decode()


@pytest.fixture
def env(settings: Any, tmp_path: Path) -> dict[str, Path]:
    settings.WFSTATE = {
        **settings.WFSTATE,
        "STORAGE_DIR": tmp_path / "storage",
        "SECRET_KEYS": [OLD_KEY],
    }
    return {"storage": tmp_path / "storage", "gate": tmp_path / "gate", "out": tmp_path / "out"}


def grep_tree(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def grep_bundle(path: Path, needle: bytes) -> list[str]:
    with tarfile.open(path) as tar:
        return [
            m.name
            for m in tar.getmembers()
            if m.isfile() and needle in tar.extractfile(m).read()  # type: ignore[union-attr]
        ]


def test_a_secret_input_is_never_in_clear_and_resume_still_uses_it(
    settings: Any, env: dict[str, Path], tmp_path: Path
) -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    needle = secret.encode()
    code, out, _ = call(
        "run_workflow", "secret_token", "--json",
        "--input", f"token={secret}", "--input", f"gate={env['gate']}",
        "--input", f"out={env['out']}",
    )  # fmt: skip
    assert code == 3  # the gate is closed
    assert needle not in out.encode()
    doc = orjson.loads(out)
    workflow_id = doc["workflow_id"]
    assert env["out"].read_text() == secret  # the step had the clear value
    assert doc["states"]["use"]["output"] == "token is ********\n"
    assert secrets.is_sealed(doc["inputs"]["token"])

    # The storage directory, the database, the API, the admin, a bundle.
    assert grep_tree(env["storage"], needle) == []
    dump = io.StringIO()
    call_command("dumpdata", stdout=dump)
    assert secret not in dump.getvalue()
    admin = User.objects.create_superuser("root", password="pw")
    client = Client()
    client.force_login(admin)
    api = client.get(f"/api/wfstate/runs/{workflow_id}/")
    assert api.status_code == 200 and needle not in api.content
    listing = client.get("/api/wfstate/runs/")
    assert listing.status_code == 200 and needle not in listing.content
    page = client.get(reverse("admin:wfstate_workflowrun_change", args=[workflow_id]))
    assert page.status_code == 200 and needle not in page.content
    bundle = tmp_path / "run.tar.gz"
    assert call("export_workflow_run", workflow_id, "-o", str(bundle))[0] == 0
    assert grep_bundle(bundle, needle) == []

    # Resume with the key rotated: a new key first, the old one still opens old runs.
    settings.WFSTATE = {
        **settings.WFSTATE,
        "SECRET_KEYS": [Fernet.generate_key().decode(), OLD_KEY],
    }
    env["gate"].write_text("open")
    code, out, err = call("resume_workflow", workflow_id, "--json")
    assert code == 0, err
    assert needle not in out.encode()
    done = orjson.loads(out)
    assert done["states"]["gated"]["output"] == "again ********\n"
    assert done["states"]["gated"]["stderr"] == "err ********\n"
    assert grep_tree(env["storage"], needle) == []


def test_a_dropped_key_is_a_clear_error_and_overrides_are_sealed(
    settings: Any, env: dict[str, Path]
) -> None:
    code, out, _ = call(
        "run_workflow", "secret_token", "--json",
        "--input", "token=first-token", "--input", f"gate={env['gate']}",
        "--input", f"out={env['out']}",
    )  # fmt: skip
    assert code == 3
    workflow_id = orjson.loads(out)["workflow_id"]
    settings.WFSTATE = {**settings.WFSTATE, "SECRET_KEYS": [Fernet.generate_key().decode()]}
    code, _, err = call("resume_workflow", workflow_id)
    assert code == 4 and "SECRET_KEYS" in err

    settings.WFSTATE = {**settings.WFSTATE, "SECRET_KEYS": [OLD_KEY]}
    env["gate"].write_text("open")
    code, out, err = call(
        "resume_workflow", workflow_id, "--from", "use", "--input", "token=second-token", "--json"
    )
    assert code == 0, err
    assert env["out"].read_text() == "second-token"
    assert grep_tree(env["storage"], b"second-token") == []
    assert grep_tree(env["storage"], b"first-token") == []
    state = get_store().load(workflow_id)
    assert secrets.is_sealed(state.history[-1]["inputs"]["token"])


def test_masking_covers_nested_outputs() -> None:
    values = ["hunter22"]
    got = secrets.mask({"a": ["x hunter22 y", {"hunter22": 1}], "b": 3}, values)
    assert got == {"a": ["x ******** y", {"********": 1}], "b": 3}


def test_an_invalid_secret_is_not_echoed(env: dict[str, Path]) -> None:
    code, out, err = call(
        "run_workflow", "secret_token", "--json",
        "--input", "token=bad token!", "--input", "gate=g", "--input", "out=o",
    )  # fmt: skip
    assert code == 1
    assert "must match the pattern" in out and "bad token!" not in out + err


def test_hooks_never_write_a_secret_in_clear(env: dict[str, Path]) -> None:
    from wfstate import runs

    token = f"hook-{uuid.uuid4().hex}"
    state = runs.start_run("secret_hooks", {"token": token})
    assert state.status == "completed", state.error
    document = get_store().load(state.workflow_id).to_dict()
    hooks_ran = orjson.dumps(document["hooks"]) + orjson.dumps(document["states"]["use"])
    assert b"start " in hooks_ran and b"pre " in hooks_ran  # the hooks did run and print
    assert grep_tree(env["storage"], token.encode()) == []
