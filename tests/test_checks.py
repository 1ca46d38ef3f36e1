"""System checks: misconfiguration is reported by ``manage.py check``, never raised."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core import checks as django_checks

from tests.helpers import REPO, mounted_tmpfs
from wfstate import checks

pytestmark = pytest.mark.usefixtures("wfstate_settings")


def ids(messages: list[django_checks.CheckMessage]) -> list[str]:
    return sorted(str(m.id) for m in messages)


def run_wfstate_checks() -> list[django_checks.CheckMessage]:
    return checks.check_storage() + checks.check_backends() + checks.check_settings()


def set_wfstate(settings: Any, **values: Any) -> None:
    settings.WFSTATE = {**settings.WFSTATE, **values}


def test_a_good_configuration_passes(settings: Any) -> None:
    assert run_wfstate_checks() == []
    # And the checks are registered with Django under the "wfstate" tag.
    registered = django_checks.run_checks(tags=["wfstate"])
    assert not [m for m in registered if m.is_serious()]


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


def test_e002_store_options_the_backend_does_not_take(settings: Any) -> None:
    # Without the check, the first run would die on a TypeError from the constructor.
    set_wfstate(
        settings, STORE={"BACKEND": "wfstate.stores.MemoryStore", "OPTIONS": {"colour": "red"}}
    )
    messages = checks.check_backends()
    assert ids(messages) == ["wfstate.E002"]
    assert "MemoryStore" in messages[0].msg
    assert "colour" in messages[0].msg


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


def test_w004_reports_an_invalid_definition_as_a_warning_with_file_and_line(
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
    assert ids(messages) == ["wfstate.W002", "wfstate.W004"]
    warning = next(m for m in messages if m.id == "wfstate.W004")
    # A warning: one bad file must not stop migrate/runserver (it was the Error E004).
    assert isinstance(warning, django_checks.Warning)
    assert not warning.is_serious()
    assert f"{bad}:4" in warning.msg and "nowhere" in warning.msg
    assert "'bad'" in str(warning.hint)


def test_w005_two_files_claiming_one_name(settings: Any, tmp_path: Path) -> None:
    text = "name: same\nstates:\n  initial: a\n  a: {type: step, command: x, on_success: d}\n"
    text += "  d: {type: terminal, status: success}\n"
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    (tmp_path / "one" / "a.yaml").write_text(text)
    (tmp_path / "two" / "b.yaml").write_text(text)
    set_wfstate(settings, WORKFLOW_DIRS=[tmp_path / "one", tmp_path / "two"])
    messages = checks.check_definitions()
    assert ids(messages) == ["wfstate.W005"]
    assert not messages[0].is_serious()
    assert "a.yaml" in messages[0].msg and "b.yaml" in messages[0].msg


def test_e005_reports_an_unimportable_api_permission_class(settings: Any) -> None:
    set_wfstate(settings, API_PERMISSION_CLASSES=["rest_framework.permissions.IsAdminUser"])
    assert checks.check_api_permissions() == []
    set_wfstate(settings, API_PERMISSION_CLASSES=["rest_framework.permissions.Nope"])
    assert ids(checks.check_api_permissions()) == ["wfstate.E005"]


def test_the_project_passes_every_check() -> None:
    from django.core.management import call_command

    call_command("check", "--fail-level", "WARNING")


# --- checked settings (W003, E006, E003 for a dotted lock backend) -------------------------


def test_w003_unknown_key_says_did_you_mean(settings: Any) -> None:
    set_wfstate(settings, LOCK_TIMOUT=5)
    messages = checks.check_settings()
    assert ids(messages) == ["wfstate.W003"]
    assert "LOCK_TIMOUT" in messages[0].msg  # the typo itself is named
    assert messages[0].hint == "Did you mean 'LOCK_TIMEOUT'?"
    assert isinstance(messages[0], django_checks.Warning)


def test_w003_matches_a_lower_case_slip_and_lists_keys_when_nothing_is_close(
    settings: Any,
) -> None:
    set_wfstate(settings, lock_backend="redis", COLOUR="blue")
    messages = {m.msg: m for m in checks.check_settings()}
    assert ids(list(messages.values())) == ["wfstate.W003", "wfstate.W003"]
    lower = next(m for text, m in messages.items() if "lock_backend" in text)
    assert lower.hint == "Did you mean 'LOCK_BACKEND'?"
    other = next(m for text, m in messages.items() if "COLOUR" in text)
    assert "Known keys:" in str(other.hint) and "STORAGE_DIR" in str(other.hint)


def test_w003_unknown_store_key(settings: Any) -> None:
    set_wfstate(settings, STORE={"BACKED": "wfstate.stores.MemoryStore"})
    messages = checks.check_settings()
    assert ids(messages) == ["wfstate.W003"]
    assert "WFSTATE['STORE'] key 'BACKED'" in messages[0].msg
    assert messages[0].hint == "Did you mean 'BACKEND'?"


WRONG_VALUES = [
    ("LOCK_TIMEOUT", "ten", "a number of seconds"),
    ("LOCK_TIMEOUT", -1, "a number of seconds"),
    ("LOCK_TIMEOUT", True, "a number of seconds"),
    ("FILE_MODE", "0o600", "an int"),
    ("FILE_MODE", 0o400, "lets the owner read and write"),
    ("FILE_MODE", 0o10600, "lets the owner read and write"),
    ("MAX_INLINE_OUTPUT", -1, "an int >= 0"),
    ("MAX_INLINE_OUTPUT", 1.5, "an int >= 0"),
    ("INDEX_ON_WRITE", "false", "True or False"),
    ("API_PERMISSION_CLASSES", "rest_framework.permissions.IsAdminUser", "a list"),
    ("WORKFLOW_DIRS", "/srv/workflows", "a list of paths"),
    ("STORAGE_DIR", 5, "a path"),
    ("REDIS_URL", "localhost:6379", "redis://"),
    ("TASK_QUEUE", "", "a non-empty string"),
    ("TASK_BACKEND", None, "a non-empty string"),
]


@pytest.mark.parametrize(("name", "value", "expected"), WRONG_VALUES)
def test_e006_a_wrongly_typed_value_is_a_clear_error(
    settings: Any, name: str, value: Any, expected: str
) -> None:
    from wfstate.conf import conf
    from wfstate.exceptions import ConfigurationError, WFStateError

    set_wfstate(settings, **{name: value})
    messages = checks.check_settings()
    assert ids(messages) == ["wfstate.E006"]
    assert f"WFSTATE['{name}']" in messages[0].msg and expected in messages[0].msg
    # The property raises the same message, as a ConfigurationError naming the setting.
    with pytest.raises(ConfigurationError) as info:
        getattr(conf, name)
    assert isinstance(info.value, WFStateError) and isinstance(info.value, ValueError)
    assert info.value.code == "configuration_error"
    assert info.value.setting == name
    assert str(info.value) == messages[0].msg


def test_e006_wfstate_is_not_a_dict(settings: Any) -> None:
    settings.WFSTATE = [("LOCK_TIMEOUT", 1)]
    messages = checks.check_settings()
    assert ids(messages) == ["wfstate.E006"]
    assert "settings.WFSTATE must be a dict" in messages[0].msg


def test_wrong_values_never_crash_the_other_checks(settings: Any) -> None:
    # Each check skips what conf refuses: the one E006 per setting is the report.
    set_wfstate(settings, STORAGE_DIR=5, WORKFLOW_DIRS="/srv/wf", API_PERMISSION_CLASSES="x.Y")
    found = django_checks.run_checks(tags=["wfstate"])
    assert [m.id for m in found if m.id == "wfstate.E006"] == ["wfstate.E006"] * 3


def test_a_wrong_value_is_a_configuration_error_at_run_time_too(settings: Any) -> None:
    from wfstate.exceptions import ConfigurationError
    from wfstate.stores import get_store

    set_wfstate(settings, LOCK_TIMEOUT="ten")
    with pytest.raises(ConfigurationError, match=r"WFSTATE\['LOCK_TIMEOUT'\]"):
        get_store()


def test_good_values_of_every_type_pass(settings: Any, tmp_path: Path) -> None:
    set_wfstate(
        settings,
        STORAGE_DIR=str(tmp_path),
        WORKFLOW_DIRS=(str(tmp_path),),
        LOCK_TIMEOUT=3,
        FILE_MODE=0o640,
        MAX_INLINE_OUTPUT=0,
        INDEX_ON_WRITE=False,
        API_PERMISSION_CLASSES=("rest_framework.permissions.AllowAny",),
        REDIS_URL="rediss://cache:6380/1",
        TASK_QUEUE="runs",
        STORE={"BACKEND": "wfstate.stores.JSONFileStore", "OPTIONS": None},
    )
    assert checks.check_settings() == []
    assert checks.check_backends() == []


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("LOCK_BACKEND", "nowhere.Lock", "cannot be imported"),
        ("LOCK_BACKEND", "wfstate.stores.JSONFileStore", "is not a LockBackend subclass"),
        ("LOCK_BACKEND", 42, "'file', 'redis' or a dotted path"),
        ("OPTIONS", "nowhere.Lock", "cannot be imported"),
        ("OPTIONS", "zookeeper", "is unknown"),
    ],
)
def test_e003_a_lock_backend_is_imported_and_subclass_checked(
    settings: Any, option: str, value: Any, message: str
) -> None:
    if option == "OPTIONS":
        set_wfstate(
            settings,
            STORE={"BACKEND": "wfstate.stores.JSONFileStore", "OPTIONS": {"lock_backend": value}},
        )
    else:
        set_wfstate(settings, LOCK_BACKEND=value)
    messages = checks.check_backends()
    assert ids(messages) == ["wfstate.E003"]
    assert message in messages[0].msg
    if option == "OPTIONS":
        assert "WFSTATE['STORE']['OPTIONS']['lock_backend']" in messages[0].msg


def test_a_dotted_lock_backend_that_subclasses_lock_backend_passes(settings: Any) -> None:
    set_wfstate(settings, LOCK_BACKEND="wfstate.stores.locks.FileLockBackend")
    assert checks.check_backends() == []


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ("wfstate.stores.JSONFileStore", "must be a dict"),
        ({"BACKEND": 5}, "must be a dotted path to a StateStore"),
        ({"OPTIONS": ["root"]}, "must be a dict of the backend's keyword arguments"),
    ],
)
def test_e002_a_malformed_store_setting(settings: Any, store: Any, message: str) -> None:
    set_wfstate(settings, STORE=store)
    messages = checks.check_backends()
    assert ids(messages) == ["wfstate.E002"]
    assert message in messages[0].msg


def test_manage_py_check_reports_a_typo_and_a_wrong_type(tmp_path: Path) -> None:
    """The real command, as an operator runs it: exit 1 (an Error), both named."""
    (tmp_path / "typo_settings.py").write_text(
        "from tests.settings import *  # noqa\n"
        "WFSTATE = {**WFSTATE, 'LOCK_TIMOUT': 5, 'LOCK_TIMEOUT': 'ten'}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update(
        DJANGO_SETTINGS_MODULE="typo_settings",
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]),
    )
    done = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert "wfstate.E006" in done.stderr
    assert "WFSTATE['LOCK_TIMEOUT'] must be a number of seconds" in done.stderr
    assert "'ten'" in done.stderr
    assert "wfstate.W003" in done.stderr and "Did you mean 'LOCK_TIMEOUT'?" in done.stderr
    assert "Traceback" not in done.stderr


def test_settings_doc_lists_every_setting_and_each_property_has_a_docstring() -> None:
    from wfstate.conf import DEFAULTS, Settings

    doc = (REPO / "docs" / "settings.md").read_text()
    for name in DEFAULTS:
        assert f"`{name}`" in doc, f"docs/settings.md does not describe {name}"
        prop = getattr(Settings, name)
        assert isinstance(prop, property) and prop.__doc__, f"conf.{name} has no docstring"
