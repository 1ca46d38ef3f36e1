"""System checks: misconfiguration is reported by ``manage.py check``, never raised."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core import checks as django_checks

from tests.tmpfs import mounted_tmpfs
from wfstate import checks

pytestmark = pytest.mark.usefixtures("wfstate_settings")


def ids(messages: list[django_checks.CheckMessage]) -> list[str]:
    return sorted(str(m.id) for m in messages)


def run_wfstate_checks() -> list[django_checks.CheckMessage]:
    return checks.check_storage() + checks.check_backends()


def set_wfstate(settings: Any, **values: Any) -> None:
    settings.WFSTATE = {**settings.WFSTATE, **values}


def test_a_good_configuration_passes(settings: Any) -> None:
    assert run_wfstate_checks() == []
    # And the checks are registered with Django under the "wfstate" tag.
    registered = django_checks.run_checks(tags=["wfstate"])
    assert not [
        m for m in registered if str(m.id).startswith("wfstate.E00") and m.id != "wfstate.E004"
    ]


def test_missing_storage_dir_that_can_be_created_is_fine(settings: Any, tmp_path: Path) -> None:
    set_wfstate(settings, STORAGE_DIR=tmp_path / "not" / "yet" / "there")
    assert run_wfstate_checks() == []


# --- E001 ----------------------------------------------------------------------------------


def test_e001_storage_dir_under_a_file_cannot_be_created(settings: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    set_wfstate(settings, STORAGE_DIR=blocker / "storage")
    messages = checks.check_storage()
    assert ids(messages) == ["wfstate.E001"]
    assert "cannot be created" in messages[0].msg
    assert isinstance(messages[0], django_checks.Error)


def test_e001_storage_dir_is_a_file(settings: Any, tmp_path: Path) -> None:
    path = tmp_path / "storage"
    path.write_text("x")
    set_wfstate(settings, STORAGE_DIR=path)
    messages = checks.check_storage()
    assert ids(messages) == ["wfstate.E001"]
    assert "not a writable directory" in messages[0].msg


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory this process cannot write: chmod for a normal user, a read-only
    tmpfs for root (whom permissions do not stop)."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o500)
        yield path
        path.chmod(0o700)
        return
    with mounted_tmpfs(
        path, "ro,size=16k", "as root, only a read-only mount is unwritable; mount failed"
    ):
        yield path


def test_e001_storage_dir_not_writable(settings: Any, read_only_dir: Path) -> None:
    set_wfstate(settings, STORAGE_DIR=read_only_dir)
    assert ids(checks.check_storage()) == ["wfstate.E001"]


def test_e001_storage_dir_missing_under_unwritable_parent(
    settings: Any, read_only_dir: Path
) -> None:
    set_wfstate(settings, STORAGE_DIR=read_only_dir / "storage")
    messages = checks.check_storage()
    assert ids(messages) == ["wfstate.E001"]
    assert "cannot be created" in messages[0].msg


# --- E002, E003 --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backend",
    ["nowhere.Store", "wfstate.stores.NoSuchStore", "wfstate.state.WorkflowState", "os.path"],
)
def test_e002_bad_store_backend(settings: Any, backend: str) -> None:
    set_wfstate(settings, STORE={"BACKEND": backend})
    messages = checks.check_backends()
    assert ids(messages) == ["wfstate.E002"]
    assert backend in messages[0].msg


def test_memory_store_backend_is_accepted(settings: Any) -> None:
    set_wfstate(settings, STORE={"BACKEND": "wfstate.stores.MemoryStore"})
    assert checks.check_backends() == []


def test_e003_unknown_lock_backend(settings: Any) -> None:
    set_wfstate(settings, LOCK_BACKEND="zookeeper")
    messages = checks.check_backends()
    assert ids(messages) == ["wfstate.E003"]
    assert "zookeeper" in messages[0].msg


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_known_lock_backends(settings: Any, backend: str) -> None:
    set_wfstate(settings, LOCK_BACKEND=backend)
    assert checks.check_backends() == []


def test_checks_run_through_django(settings: Any) -> None:
    set_wfstate(settings, LOCK_BACKEND="zookeeper", STORE={"BACKEND": "nowhere.Store"})
    found = {str(m.id) for m in django_checks.run_checks(tags=["wfstate"])}
    assert {"wfstate.E002", "wfstate.E003"} <= found


# --- W001 ------------------------------------------------------------------------------------

MOUNTS = """\
/dev/vda / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid 0 0
server:/export /mnt/nfs nfs4 rw,relatime,vers=4.2 0 0
//nas/share /mnt/my\\040share cifs rw 0 0
/dev/vdb /mnt/nfs/local ext4 rw 0 0
/dev/vdc /mnt/nfsx xfs rw 0 0
"""


@pytest.fixture
def mounts_file(tmp_path: Path) -> str:
    path = tmp_path / "mounts"
    path.write_text(MOUNTS)
    return str(path)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", "ext4"),
        ("/srv/app/storage", "ext4"),
        ("/mnt/nfs", "nfs4"),
        ("/mnt/nfs/app/storage", "nfs4"),
        ("/mnt/nfs/local/storage", "ext4"),  # the longest mount point wins
        ("/mnt/nfsx/storage", "xfs"),  # a prefix of the name is not a parent
        ("/mnt/my share/storage", "cifs"),  # \040 in /proc/mounts is a space
    ],
)
def test_filesystem_type(mounts_file: str, path: str, expected: str) -> None:
    assert checks.filesystem_type(Path(path), mounts_file) == expected


def test_filesystem_type_unknown_without_a_mounts_file(tmp_path: Path) -> None:
    assert checks.filesystem_type(tmp_path, str(tmp_path / "missing")) is None


def test_w001_network_filesystem(
    settings: Any, tmp_path: Path, mounts_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()
    # The machine's mount table says the storage is on NFS (only the table is faked).
    table = Path(mounts_file)
    table.write_text(MOUNTS + f"server:/tmp {tmp_path} nfs rw 0 0\n")
    real = checks.filesystem_type
    monkeypatch.setattr(
        checks, "filesystem_type", lambda path, mounts_file="": real(path, str(table))
    )
    set_wfstate(settings, STORAGE_DIR=storage)
    messages = checks.check_storage()
    assert ids(messages) == ["wfstate.W001"]
    assert isinstance(messages[0], django_checks.Warning)
    assert "nfs" in messages[0].msg
    assert "redis" in str(messages[0].hint).lower()


def test_no_w001_on_this_machines_real_filesystem(settings: Any, tmp_path: Path) -> None:
    fstype = checks.filesystem_type(tmp_path)
    if fstype in checks.NETWORK_FILESYSTEMS:
        pytest.skip(f"the test directory itself is on {fstype}")
    set_wfstate(settings, STORAGE_DIR=tmp_path)
    assert checks.check_storage() == []


def test_e004_reports_an_invalid_definition_with_file_and_line(
    settings: Any, tmp_path: Path
) -> None:
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    bad = workflows / "bad.yaml"
    bad.write_text(
        "name: bad\nstates:\n  initial: a\n  a: {type: step, command: x, on_success: nowhere}\n"
    )
    set_wfstate(settings, WORKFLOW_DIRS=[workflows, tmp_path / "missing"])
    messages = checks.check_definitions()
    assert ids(messages) == ["wfstate.E004", "wfstate.W002"]
    error = next(m for m in messages if m.id == "wfstate.E004")
    assert f"{bad}:4" in error.msg and "nowhere" in error.msg


def test_e005_reports_an_unimportable_api_permission_class(settings: Any) -> None:
    set_wfstate(settings, API_PERMISSION_CLASSES=["rest_framework.permissions.IsAdminUser"])
    assert checks.check_api_permissions() == []
    set_wfstate(settings, API_PERMISSION_CLASSES=["rest_framework.permissions.Nope"])
    assert ids(checks.check_api_permissions()) == ["wfstate.E005"]


def test_the_project_passes_every_check() -> None:
    from django.core.management import call_command

    call_command("check", "--fail-level", "WARNING")
