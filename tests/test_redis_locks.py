"""What the Redis lock backend does beyond the shared cases of test_store_locks.py.

The shared lock semantics (run lock refused at once naming pid and host, a SIGKILLed
holder's locks free, write lock timeout, re-entrancy, no lost updates) run against
both backends in tests/test_store_locks.py. Here: what only Redis has, an owner record
in a key that can outlive its holder, and a lock that can be lost while its holder lives.
Real Redis on loopback; every test works under its own key prefix, deleted afterwards.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from tests import store_workers
from tests.helpers import REDIS_URL, delete_prefix, unique_prefix
from wfstate.exceptions import RunLocked, StorageError
from wfstate.state import WorkflowState
from wfstate.stores import JSONFileStore
from wfstate.stores.redis_locks import UNAVAILABLE_TIMEOUT, RedisLockBackend

CTX: SpawnContext = multiprocessing.get_context("spawn")

pytestmark = pytest.mark.redis


@pytest.fixture
def kwargs(tmp_path: Path) -> Iterator[dict[str, Any]]:
    prefix = unique_prefix()
    yield {
        "root": str(tmp_path / "storage"),
        "lock_backend": "redis",
        "lock_timeout": 0.5,
        "lock_options": {"redis_url": REDIS_URL, "prefix": prefix},
    }
    delete_prefix(prefix)


@pytest.fixture
def store(kwargs: dict[str, Any]) -> JSONFileStore:
    return JSONFileStore(**kwargs)


@pytest.fixture
def run_id(store: JSONFileStore) -> str:
    state = WorkflowState.new("locks", inputs={"counter": 0})
    store.save(state)
    return state.workflow_id


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield connection
    connection.close()


class Holder:
    """A spawned child holding the run lock until released, stopped or killed."""

    def __init__(self, kwargs: dict[str, Any], run_id: str) -> None:
        self.held = CTX.Event()
        self.release = CTX.Event()
        self.proc = CTX.Process(
            target=store_workers.hold_run_lock,
            args=(kwargs, run_id, self.held, self.release),
            daemon=True,
        )
        self.proc.start()
        assert self.held.wait(60), "the child never took the lock"

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def close(self) -> None:
        if self.proc.is_alive():
            os.kill(self.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.join(10)


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for holder in started:
        holder.close()


def test_the_backend_is_chosen_by_name(store: JSONFileStore, kwargs: dict[str, Any]) -> None:
    assert isinstance(store.locks, RedisLockBackend)
    assert store.locks.prefix == kwargs["lock_options"]["prefix"]


def test_owner_record_sits_next_to_the_lock_and_goes_with_it(
    store: JSONFileStore, run_id: str, client: redis.Redis
) -> None:
    backend = store.locks
    assert isinstance(backend, RedisLockBackend)
    key = f"{backend.prefix}:{run_id}:run:owner"
    with store.run_lock(run_id) as me:
        record = orjson.loads(client.get(key) or "null")
        assert record["owner"] == me
        assert isinstance(record["holder"], str)
    assert client.get(key) is None
    assert store.run_lock_owner(run_id) is None


def test_a_killed_holders_record_is_never_reported(
    store: JSONFileStore,
    kwargs: dict[str, Any],
    run_id: str,
    client: redis.Redis,
    holders: list[Holder],
) -> None:
    holder = Holder(kwargs, run_id)
    holders.append(holder)
    assert store.run_lock_owner(run_id)["pid"] == holder.pid  # type: ignore[index]
    holder.proc.kill()
    holder.proc.join(10)
    backend = store.locks
    assert isinstance(backend, RedisLockBackend)
    key = f"{backend.prefix}:{run_id}:run:owner"
    # SIGKILL ran no cleanup: the record is still there, naming a dead process...
    assert orjson.loads(client.get(key) or "null")["owner"]["pid"] == holder.pid
    # ...but its holder no longer answers on the channel, so nobody is reported.
    assert store.run_lock_owner(run_id) is None
    with store.run_lock(run_id) as me:
        assert store.run_lock_owner(run_id) == me


def test_a_record_of_another_holder_is_not_blamed(
    store: JSONFileStore, run_id: str, client: redis.Redis
) -> None:
    # The lock is held, but the record names a holder id that is not on the channel
    # (a dead holder's, not yet overwritten): "somebody", never the dead pid.
    backend = store.locks
    assert isinstance(backend, RedisLockBackend)
    key = f"{backend.prefix}:{run_id}:run:owner"
    with store.run_lock(run_id):
        stale = {"holder": "0" * 32, "owner": {"pid": 999999999, "host": "x", "since": "-"}}
        client.set(key, orjson.dumps(stale))
        began = time.monotonic()
        assert store.run_lock_owner(run_id) == {"pid": 0, "host": "", "since": ""}
        assert time.monotonic() - began < 2
        other = JSONFileStore(**_kwargs_of(store))
        with pytest.raises(RunLocked) as info, other.run_lock(run_id):
            pass
        assert "999999999" not in str(info.value)


def _kwargs_of(store: JSONFileStore) -> dict[str, Any]:
    backend = store.locks
    assert isinstance(backend, RedisLockBackend)
    return {
        "root": str(store.root),
        "lock_backend": "redis",
        "lock_options": {"redis_url": backend.redis_url, "prefix": backend.prefix},
    }


def test_a_lost_run_lock_stops_its_writer_and_frees_the_run(
    store: JSONFileStore, run_id: str, client: redis.Redis
) -> None:
    # Redis drops the holder's subscription (a restart, a cut connection): the lock is
    # lost while its process lives. That process must stop writing the run, and
    # another may take it.
    backend = store.locks
    assert isinstance(backend, RedisLockBackend)
    with store.run_lock(run_id):
        lock = backend._run_locks[run_id]
        killed = 0
        for entry in client.client_list(_type="pubsub"):
            if entry.get("name") == lock.client_name:
                client.client_kill_filter(_id=entry["id"])
                killed += 1
        assert killed == 1
        deadline = time.monotonic() + 10
        while not lock.lost and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lock.lost
        with pytest.raises(StorageError, match="lost its run lock"):
            store.save(store.load(run_id))
        other = JSONFileStore(**_kwargs_of(store))
        with other.run_lock(run_id) as me:
            assert other.run_lock_owner(run_id) == me
    # Released (and the loss logged) without raising; the run is writable again.
    store.save(store.load(run_id))


@pytest.mark.slow
def test_a_silent_holder_is_reaped_after_the_unavailable_timeout(
    store: JSONFileStore, kwargs: dict[str, Any], run_id: str, holders: list[Holder]
) -> None:
    # Unlike flock, a Redis lock needs its holder to answer: a stopped process (SIGSTOP,
    # or a host cut off the network) loses its run lock to the next taker after
    # UNAVAILABLE_TIMEOUT seconds of silence. Documented in docs/scaling.md.
    holder = Holder(kwargs, run_id)
    holders.append(holder)
    os.kill(holder.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 4 * UNAVAILABLE_TIMEOUT + 10
    while True:
        try:
            with store.run_lock(run_id) as me:
                assert me["pid"] == os.getpid()
            break
        except RunLocked:
            assert time.monotonic() < deadline, "the silent holder was never reaped"
            time.sleep(0.05)
