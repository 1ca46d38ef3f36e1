"""Run bundles: ``export_workflow_run`` / ``import_workflow_run`` (issue 14, acceptance 5)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import call
from wfstate import bundles
from wfstate.models import WorkflowRun
from wfstate.stores import get_store

# transaction=True: the engine indexes from a thread of its own.
pytestmark = pytest.mark.django_db(transaction=True)

DEFINITION = """\
name: portable
version: "1"
states:
  initial: one
  one: {type: step, command: echo one, on_success: two}
  two: {type: step, command: exit 1, on_success: done}
  done: {type: terminal, status: success}
"""


@pytest.fixture
def dirs(settings: Any, tmp_path: Path) -> dict[str, Path]:
    paths = {
        "a": tmp_path / "host-a",
        "b": tmp_path / "host-b",
        "work": tmp_path / "work",
        "defs": tmp_path / "defs",
    }
    for path in paths.values():
        path.mkdir()
    settings.WFSTATE = {**settings.WFSTATE, "STORAGE_DIR": paths["a"], "MAX_INLINE_OUTPUT": 1000}
    return paths


def use_storage(settings: Any, storage: Path, **extra: Any) -> None:
    settings.WFSTATE = {**settings.WFSTATE, "STORAGE_DIR": storage, **extra}


def test_round_trip_export_import_resume_to_completion(
    settings: Any, dirs: dict[str, Path]
) -> None:
    gate = dirs["work"] / "gate"
    code, out, _ = call("run_workflow", "bundle_resume", "--input", f"gate={gate}", "--json")
    assert code == 3
    workflow_id = orjson.loads(out)["workflow_id"]
    store_a = get_store()
    whole_output = store_a.load_output(workflow_id, "produce", "stdout")
    assert whole_output.decode().splitlines()[-1] == "3000"
    state_a = store_a.load(workflow_id)
    assert state_a.states["produce"].output_truncated is True

    bundle = dirs["work"] / "run.tar.gz"
    code, out, err = call("export_workflow_run", workflow_id, "-o", str(bundle), "--json")
    assert code == 0, err
    manifest = orjson.loads(out)["manifest"]
    assert manifest["definition"]["exact"] is True
    assert manifest["status"] == "failed"

    # Host B: another storage directory and an empty index.
    WorkflowRun.objects.all().delete()
    use_storage(settings, dirs["b"])
    store_b = get_store()
    assert not store_b.exists(workflow_id)
    code, out, err = call("import_workflow_run", str(bundle), "--json")
    assert code == 0, err
    imported = orjson.loads(out)
    assert imported == {
        "workflow_id": workflow_id,
        "workflow_name": "bundle_resume",
        "status": "failed",
        "definition": "same",
        "warnings": [],
    }
    row = WorkflowRun.objects.get(workflow_id=workflow_id)
    assert row.status == "failed" and row.revision == state_a.revision + 1
    state_b = store_b.load(workflow_id)
    assert state_b.states == state_a.states and state_b.inputs == state_a.inputs
    assert state_b.history[-1]["event"] == "imported"
    assert store_b.load_output(workflow_id, "produce", "stdout") == whole_output

    gate.write_text("open")
    code, out, err = call("resume_workflow", workflow_id, "--json")
    assert code == 0, err
    done = orjson.loads(out)
    assert done["status"] == "completed"
    assert done["states"]["gated"]["output"] == "passed\n"
    assert WorkflowRun.objects.get(workflow_id=workflow_id).status == "completed"
    # Host A still has its own copy, untouched.
    assert store_a.load(workflow_id).status == "failed"


def test_an_existing_run_is_not_overwritten_unless_asked(
    settings: Any, dirs: dict[str, Path]
) -> None:
    code, out, _ = call("run_workflow", "fails", "--json")
    assert code == 3
    workflow_id = orjson.loads(out)["workflow_id"]
    bundle = dirs["work"] / "run.tar.gz"
    assert call("export_workflow_run", workflow_id, "-o", str(bundle))[0] == 0
    before = get_store().read_bytes(workflow_id)  # type: ignore[attr-defined]
    code, _, err = call("import_workflow_run", str(bundle))
    assert code == 1 and "already exists" in err and "--replace" in err
    assert get_store().read_bytes(workflow_id) == before  # type: ignore[attr-defined]
    code, _, err = call("import_workflow_run", str(bundle), "--replace")
    assert code == 0, err
    assert get_store().load(workflow_id).history[-1]["event"] == "imported"


def test_a_changed_or_missing_definition_is_said(settings: Any, dirs: dict[str, Path]) -> None:
    definition = dirs["defs"] / "portable.yaml"
    definition.write_text(DEFINITION)
    workflow_dirs = settings.WFSTATE["WORKFLOW_DIRS"]
    use_storage(settings, dirs["a"], WORKFLOW_DIRS=[*workflow_dirs, dirs["defs"]])
    code, out, _ = call("run_workflow", "portable", "--json")
    assert code == 3
    workflow_id = orjson.loads(out)["workflow_id"]
    definition.write_text(DEFINITION.replace("echo one", "echo uno"))
    bundle = dirs["work"] / "run.tar.gz"
    code, out, err = call("export_workflow_run", workflow_id, "-o", str(bundle), "--json")
    assert code == 0
    assert "changed since run" in err
    assert orjson.loads(out)["manifest"]["definition"]["exact"] is False

    # Host B does not know the workflow.
    use_storage(settings, dirs["b"], WORKFLOW_DIRS=workflow_dirs)
    WorkflowRun.objects.all().delete()
    code, out, err = call("import_workflow_run", str(bundle), "--json")
    assert code == 0
    result = orjson.loads(out)
    assert result["definition"] == "missing"
    assert any("not defined here" in w for w in result["warnings"])
    assert any("not the exact one" in w for w in result["warnings"])

    installed = dirs["work"] / "installed"
    code, out, err = call(
        "import_workflow_run",
        str(bundle),
        "--replace",
        "--install-definition",
        str(installed),
        "--json",
    )
    assert code == 0, err
    assert orjson.loads(out)["definition"] == "installed"
    assert (installed / "portable.yaml").read_text() == DEFINITION.replace("echo one", "echo uno")
    code, _, err = call(
        "import_workflow_run", str(bundle), "--replace", "--install-definition", str(installed)
    )
    assert code == 0, err  # the same file there already: nothing to do
    (installed / "portable.yaml").write_text(DEFINITION)
    code, _, err = call(
        "import_workflow_run", str(bundle), "--replace", "--install-definition", str(installed)
    )
    assert code == 1 and "refusing to replace" in err
    assert (installed / "portable.yaml").read_text() == DEFINITION


# --- hostile archives -------------------------------------------------------------------

RUN = "3f6c1e0a-9b1d-4c1e-8f5e-2d7a0c9b4e11"
PREFIX = f"wfstate-run-{RUN}"


def archive(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.fixture
def good_bundle(dirs: dict[str, Path]) -> Path:
    code, out, _ = call("run_workflow", "fails", "--json")
    assert code == 3
    workflow_id = orjson.loads(out)["workflow_id"]
    path = dirs["work"] / "good.tar.gz"
    assert call("export_workflow_run", workflow_id, "-o", str(path))[0] == 0
    return path


def members_of(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [
            (m.name, tar.extractfile(m).read())  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        ]


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([(f"{PREFIX}/../../evil", b"x")], "unsafe path"),
        ([("/etc/evil", b"x")], "unsafe path"),
        ([link(f"{PREFIX}/state.json", "/etc/passwd")], "link"),
        ([link(f"{PREFIX}/state.json", "x", tarfile.LNKTYPE)], "link"),
        ([("elsewhere/state.json", b"{}")], "outside"),
        ([(f"{PREFIX}/outputs/../../x", b"x")], "unsafe path"),
        ([(f"{PREFIX}/outputs/a b.stdout", b"x")], "unsafe output name"),
        ([(f"{PREFIX}/extra.sh", b"x")], "unexpected member"),
        ([(f"{PREFIX}/state.json", b"{}")], "manifest.json and a state.json"),
    ],
)
def test_hostile_members_are_refused_and_nothing_is_written(
    dirs: dict[str, Path], members: list[Any], message: str
) -> None:
    path = archive(dirs["work"] / "bad.tar.gz", members)
    code, _, err = call("import_workflow_run", str(path))
    assert code == 1 and message in err, err
    assert not any(dirs["a"].rglob("*.json"))


def test_tampered_and_foreign_bundles_are_refused(
    dirs: dict[str, Path], good_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members = members_of(good_bundle)
    store = get_store()
    workflow_id = store.list()[0]
    store.delete(workflow_id)

    tampered = [
        (n, d.replace(b'"fails"', b'"other"')) if n.endswith("state.json") else (n, d)
        for n, d in members
    ]
    code, _, err = call("import_workflow_run", str(archive(dirs["work"] / "t.tar.gz", tampered)))
    assert code == 1 and "checksum" in err

    (dirs["work"] / "junk.tar.gz").write_bytes(b"not a tarball")
    code, _, err = call("import_workflow_run", str(dirs["work"] / "junk.tar.gz"))
    assert code == 1 and "not a readable" in err

    monkeypatch.setattr(bundles, "MAX_MEMBER_BYTES", 100)
    code, _, err = call("import_workflow_run", str(good_bundle))
    assert code == 1 and "more than 100" in err
    assert not store.exists(workflow_id)

    monkeypatch.setattr(bundles, "MAX_MEMBER_BYTES", 1 << 30)
    code, _, err = call("import_workflow_run", str(good_bundle))
    assert code == 0, err
    assert store.exists(workflow_id)
