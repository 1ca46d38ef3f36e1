"""Run bundles: one run in a ``.tar.gz`` that another host can import and resume.

Layout (every member under one directory named after the run)::

    wfstate-run-<id>/manifest.json      format, run id, workflow, host, time, checksums
    wfstate-run-<id>/state.json         the state file, history included, byte for byte
    wfstate-run-<id>/outputs/<state>.<stream>   whole outputs cut in the state file
    wfstate-run-<id>/definition/<file>  the definition file the run ran

The definition is the exact one when the current file's sha256 is the run's
``definition_sha256``; otherwise the current one is bundled, the manifest says
``"exact": false`` and a warning is returned (wfstate keeps no older definitions).

Import trusts nothing in the archive: every member must be a regular file or a
directory at one of the paths above (no ``..``, no absolute path, no link, no device),
sizes are limited before anything is read, the checksums of the manifest must match,
and the state must parse and name the run of the manifest. Outputs are written before
the state file, so a crash midway leaves side files without a state file, which
``doctor --fix`` removes, never a run with missing outputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import socket
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from wfstate.exceptions import RunNotFound, StorageError, WFStateError
from wfstate.state import utcnow
from wfstate.stores.base import StateStore, validate_id, validate_name

FORMAT = "wfstate-run-bundle"
FORMAT_VERSION = 1

# Limits an imported archive must keep (before a byte of a member is read).
MAX_MEMBERS = 10_000
MAX_MEMBER_BYTES = 1024 * 1024 * 1024
MAX_TOTAL_BYTES = 4 * 1024 * 1024 * 1024
MAX_MANIFEST_BYTES = 4 * 1024 * 1024

_DEFINITION_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\.(yaml|yml|json)")


class InvalidBundle(WFStateError, ValueError):
    """An archive that is not a run bundle, or one that breaks a rule of the format."""

    code = "invalid_bundle"
    exit_code = 1


class DefinitionExists(WFStateError):
    """``--install-definition`` would replace a file that is already there."""

    code = "definition_exists"
    exit_code = 1


class RunExists(WFStateError):
    """Importing a run whose id is already in the storage directory."""

    code = "run_exists"
    exit_code = 1


def _prefix(workflow_id: str) -> str:
    return f"wfstate-run-{workflow_id}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    info.mtime = 0  # reproducible archives: same run, same bytes
    tar.addfile(info, io.BytesIO(data))


def _outputs(store: StateStore, workflow_id: str) -> dict[str, bytes]:
    """The run's whole-output side files, by file name (``<state>.<stream>``)."""
    directory = store.outputs_dir(workflow_id)
    if directory is None or directory.is_symlink() or not directory.is_dir():
        return {}
    found = {}
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.is_symlink():
            continue  # temp files of interrupted writes, anything odd
        state_name, _, stream = path.name.rpartition(".")
        found[path.name] = store.load_output(workflow_id, state_name, stream)
    return found


def _definition(workflow_name: str, run_sha256: str) -> tuple[str, bytes, bool] | None:
    """(file name, bytes, exact) of the run's definition, or None when it is unknown."""
    from wfstate.definitions import get_registry

    try:
        definition = get_registry().get(workflow_name)
    except WFStateError:
        return None
    if definition.path is None:
        return None
    data = Path(definition.path).read_bytes()
    exact = not run_sha256 or _sha256(data) == run_sha256
    return Path(definition.path).name, data, exact


@dataclass
class ExportResult:
    path: str
    workflow_id: str
    manifest: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def export_run(
    workflow_id: str, target: str | os.PathLike[str], *, store: StateStore | None = None
) -> ExportResult:
    """Write the run's bundle to ``target`` (atomically and durably).

    The state and its outputs are read under the run's write lock, so they belong to
    one revision. A run being executed is exported as it stands at that revision.

    Raises:
        RunNotFound, CorruptState, StateLocked, StorageError (the target cannot be written).
    """
    from wfstate.stores import get_store

    store = store or get_store()
    validate_id(workflow_id)
    with store.write_lock(workflow_id):
        state = store.load(workflow_id)
        # The stored bytes as they are (what was fsynced), where the store can give them.
        read_raw = store.raw_reader()
        state_bytes = (read_raw(workflow_id) if read_raw else None) or orjson.dumps(state.to_dict())
        outputs = _outputs(store, workflow_id)
    warnings = []
    definition = _definition(state.workflow_name, state.definition_sha256)
    if definition is None:
        warnings.append(
            f"the definition of {state.workflow_name!r} is not known here: "
            "the bundle has none (the importing host needs it to resume the run)"
        )
    elif not definition[2]:
        warnings.append(
            f"the definition of {state.workflow_name!r} changed since run {workflow_id} "
            f"began (sha256 {state.definition_sha256[:12]}): the current one is bundled"
        )
    prefix = _prefix(workflow_id)
    files: dict[str, str] = {"state.json": _sha256(state_bytes)}
    for name, data in outputs.items():
        files[f"outputs/{name}"] = _sha256(data)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "workflow_id": workflow_id,
        "workflow_name": state.workflow_name,
        "status": str(state.status),
        "revision": state.revision,
        "definition_sha256": state.definition_sha256,
        "definition": None,
        "exported_at": utcnow(),
        "exported_from": socket.gethostname(),
        "files": files,
    }
    if definition is not None:
        name, data, exact = definition
        files[f"definition/{name}"] = _sha256(data)
        manifest["definition"] = {"file": f"definition/{name}", "sha256": _sha256(data)}
        manifest["definition"]["exact"] = exact

    target_path = Path(target)
    directory = target_path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{target_path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise StorageError(f"could not write {target_path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
                _add(
                    tar,
                    f"{prefix}/manifest.json",
                    orjson.dumps(manifest, option=orjson.OPT_INDENT_2),
                )
                _add(tar, f"{prefix}/state.json", state_bytes)
                for name, data in outputs.items():
                    _add(tar, f"{prefix}/outputs/{name}", data)
                if definition is not None:
                    _add(tar, f"{prefix}/definition/{definition[0]}", definition[1])
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temp, target_path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise StorageError(f"could not write {target_path}: {exc.strerror or exc}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return ExportResult(str(target_path), workflow_id, manifest, warnings)


# --- import ------------------------------------------------------------------------------


@dataclass
class Bundle:
    """A bundle read and checked in memory."""

    manifest: dict[str, Any]
    state_bytes: bytes
    outputs: dict[str, bytes]
    definition: tuple[str, bytes] | None


def _member_path(member: tarfile.TarInfo, prefix: str | None, source: str) -> tuple[str, str]:
    """(prefix, path inside it) of a member, checked; raises InvalidBundle."""
    name = member.name
    parts = name.split("/")
    if (
        name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or any(p in ("", ".", "..") for p in parts[:-1])
        or ".." in parts
    ):
        raise InvalidBundle(f"{source}: unsafe path {name!r} in the archive")
    if not (member.isfile() or member.isdir()):
        raise InvalidBundle(
            f"{source}: {name!r} is a link or a special file; a bundle holds only files"
        )
    head, rest = parts[0], "/".join(p for p in parts[1:] if p)
    if not head.startswith("wfstate-run-") or (prefix is not None and head != prefix):
        raise InvalidBundle(f"{source}: {name!r} is outside the run's directory")
    return head, rest


def read_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read and check a bundle (nothing is written).

    Raises:
        InvalidBundle: not a gzip tar, an unsafe or unknown member, a limit broken, a
            checksum that does not match, a manifest or state that does not parse.
        StorageError: the file cannot be read.
    """
    from wfstate.stores.jsonfile import parse_state

    source = str(path)
    members: dict[str, bytes] = {}
    prefix: str | None = None
    total = 0
    try:
        with tarfile.open(source, mode="r:gz") as tar:
            count = 0
            for member in tar:
                count += 1
                if count > MAX_MEMBERS:
                    raise InvalidBundle(f"{source}: more than {MAX_MEMBERS} members")
                prefix, inner = _member_path(member, prefix, source)
                if member.isdir():
                    continue
                if inner in members:
                    raise InvalidBundle(f"{source}: {member.name!r} appears twice")
                if member.size > MAX_MEMBER_BYTES:
                    raise InvalidBundle(
                        f"{source}: {member.name!r} is {member.size} bytes, "
                        f"more than {MAX_MEMBER_BYTES}"
                    )
                total += member.size
                if total > MAX_TOTAL_BYTES:
                    raise InvalidBundle(f"{source}: more than {MAX_TOTAL_BYTES} bytes in all")
                _check_inner(inner, member.size, source)
                extracted = tar.extractfile(member)
                if extracted is None:
                    raise InvalidBundle(f"{source}: cannot read {member.name!r}")
                data = extracted.read(member.size + 1)
                if len(data) != member.size:
                    raise InvalidBundle(f"{source}: {member.name!r} is truncated")
                members[inner] = data
    except FileNotFoundError:
        raise RunNotFound(f"no bundle {source}") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, WFStateError):
            raise
        raise InvalidBundle(f"{source} is not a readable .tar.gz bundle: {exc}") from None

    if "manifest.json" not in members or "state.json" not in members:
        raise InvalidBundle(f"{source}: a bundle has a manifest.json and a state.json")
    try:
        manifest = orjson.loads(members["manifest.json"])
    except orjson.JSONDecodeError as exc:
        raise InvalidBundle(f"{source}: manifest.json is not JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InvalidBundle(f"{source}: not a {FORMAT} (manifest.json says otherwise)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise InvalidBundle(
            f"{source}: bundle format version {manifest.get('format_version')!r} "
            f"is not {FORMAT_VERSION}"
        )
    try:
        workflow_id = validate_id(manifest.get("workflow_id"))
    except WFStateError as exc:
        raise InvalidBundle(f"{source}: {exc}") from None
    if prefix != _prefix(workflow_id):
        raise InvalidBundle(f"{source}: the directory {prefix!r} is not run {workflow_id}'s")
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != set(members) - {"manifest.json"}:
        raise InvalidBundle(f"{source}: the manifest's file list is not the archive's")
    for inner, data in members.items():
        if inner != "manifest.json" and files[inner] != _sha256(data):
            raise InvalidBundle(f"{source}: {inner} does not match its checksum")
    state = parse_state(members["state.json"], f"{source}:state.json")
    if state.workflow_id != workflow_id:
        raise InvalidBundle(f"{source}: state.json is run {state.workflow_id}, not {workflow_id}")
    definitions = [(k, v) for k, v in members.items() if k.startswith("definition/")]
    if len(definitions) > 1:
        raise InvalidBundle(f"{source}: more than one definition file")
    return Bundle(
        manifest=manifest,
        state_bytes=members["state.json"],
        outputs={k[len("outputs/") :]: v for k, v in members.items() if k.startswith("outputs/")},
        definition=(definitions[0][0][len("definition/") :], definitions[0][1])
        if definitions
        else None,
    )


def _check_inner(inner: str, size: int, source: str) -> None:
    parts = inner.split("/")
    if inner in ("manifest.json", "state.json"):
        if inner == "manifest.json" and size > MAX_MANIFEST_BYTES:
            raise InvalidBundle(f"{source}: manifest.json is too large")
        return
    if len(parts) == 2 and parts[0] == "outputs":
        state_name, _, stream = parts[1].rpartition(".")
        try:
            validate_name(state_name)
            validate_name(stream)
        except ValueError:
            raise InvalidBundle(f"{source}: unsafe output name {parts[1]!r}") from None
        return
    if len(parts) == 2 and parts[0] == "definition" and _DEFINITION_FILE.fullmatch(parts[1]):
        return
    raise InvalidBundle(f"{source}: unexpected member {inner!r}")


@dataclass
class ImportResult:
    workflow_id: str
    workflow_name: str
    status: str
    definition: str  # "same", "different", "missing", "installed" or "none"
    warnings: list[str] = field(default_factory=list)


def import_run(
    path: str | os.PathLike[str],
    *,
    store: StateStore | None = None,
    replace: bool = False,
    install_definition: str | os.PathLike[str] | None = None,
) -> ImportResult:
    """Import a bundle: outputs, then the state file, then its index row.

    The state gets one more revision with a history entry saying where it came from.
    With ``install_definition`` the bundled definition file is written into that
    directory when the workflow is not known here (an existing file is never replaced).

    Raises:
        InvalidBundle, RunExists (without ``replace``), StillRunning (``replace`` of a run
        being executed), StorageError.
    """
    from wfstate import index
    from wfstate.conf import conf
    from wfstate.definitions.registry import clear_cache
    from wfstate.stores import get_store
    from wfstate.stores.jsonfile import parse_state

    store = store or get_store()
    bundle = read_bundle(path)
    state = parse_state(bundle.state_bytes, f"{path}:state.json")
    workflow_id = state.workflow_id
    warnings: list[str] = []

    outcome, target = _definition_outcome(bundle, state.workflow_name, install_definition)
    if store.exists(workflow_id):
        if not replace:
            raise RunExists(
                f"run {workflow_id} already exists here; import_workflow_run --replace "
                "overwrites it"
            )
        store.delete(workflow_id)  # StillRunning when an executor holds it

    for name, data in bundle.outputs.items():
        state_name, _, stream = name.rpartition(".")
        store.save_output(workflow_id, state_name, stream, data)
    state.history.append(
        {
            "event": "imported",
            "at": utcnow(),
            "from_host": bundle.manifest.get("exported_from"),
            "exported_at": bundle.manifest.get("exported_at"),
            "revision": state.revision,
            "bundle": os.path.basename(str(path)),
        }
    )
    with store.write_lock(workflow_id):
        if store.exists(workflow_id):  # someone created it meanwhile
            raise RunExists(f"run {workflow_id} appeared while it was being imported")
        store.save(state)
    if conf.INDEX_ON_WRITE:
        index.reindex(workflow_id, store)

    if target is not None and bundle.definition is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(bundle.definition[1])
        clear_cache()
    if outcome == "different":
        warnings.append(
            f"the definition of {state.workflow_name!r} here differs from the bundled "
            "one: resume needs --allow-changed-definition"
        )
    elif outcome == "missing":
        warnings.append(
            f"workflow {state.workflow_name!r} is not defined here: put the bundled "
            "definition in a WORKFLOW_DIRS directory (--install-definition DIR) to resume it"
        )
    definition = bundle.manifest.get("definition") or {}
    if bundle.definition is not None and not definition.get("exact", True):
        warnings.append(
            "the bundled definition is not the exact one the run began with (it changed "
            "on the exporting host before the export)"
        )
    return ImportResult(workflow_id, state.workflow_name, str(state.status), outcome, warnings)


def _definition_outcome(
    bundle: Bundle, workflow_name: str, install_definition: str | os.PathLike[str] | None
) -> tuple[str, Path | None]:
    """How the bundled definition compares with this host's, and where to install it.

    Raises:
        DefinitionExists: the file to install is already there.
    """
    from wfstate.definitions import get_registry

    if bundle.definition is None:
        return "none", None
    name, data = bundle.definition
    try:
        here = get_registry().get(workflow_name)
    except WFStateError:
        here = None
    if here is not None:
        return ("same" if here.sha256 == _sha256(data) else "different"), None
    if install_definition is None:
        return "missing", None
    target = Path(install_definition) / name
    if target.is_file() and not target.is_symlink() and target.read_bytes() == data:
        return "installed", None  # there already, byte for byte
    if target.exists() or target.is_symlink():
        raise DefinitionExists(f"refusing to replace {target} with the bundled definition")
    return "installed", target
