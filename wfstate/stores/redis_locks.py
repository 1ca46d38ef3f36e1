"""The two locks of a run, held in Redis with portalocker's ``RedisLock`` (docs/scaling.md).

For several hosts sharing one storage directory (NFS and friends), where ``flock``
cannot be trusted. The semantics are the file backend's (``wfstate.stores.locks``):

* **write lock**: waits up to ``timeout``, then ``StateLocked``; re-entrant per thread
  (the ``LockBackend`` base class counts the depth, Redis sees one holder).
* **run lock**: never waits; ``RunLocked`` names the holder's pid, host and start time.

Why portalocker's ``RedisLock`` and not a ``SET NX PX`` key: its lock is a pub/sub
*subscription*, not a key with a lease. Ownership lives exactly as long as the holder's
connection, so when a holder is SIGKILLed its kernel closes the socket, Redis drops the
subscription and the next taker gets the lock at once: no lease to wait out, and no
lease to refresh during a long step. A holder that is alive but silent (stopped,
partitioned) is reaped by the next taker after ``unavailable_timeout`` of silence.

The owner info of a run lock (pid, host, since) lives in a Redis key next to the lock
channel, together with the ``holder_id`` of the ``RedisLock`` that wrote it. A key left
behind by a SIGKILLed holder is never reported: ``run_lock_owner`` only believes a key
whose ``holder_id`` answers on the channel right now.

What Redis cannot give that a local flock does: a lock can be *lost* while its holder
lives (Redis restarted, the connection cut, or the holder silent for longer than
``unavailable_timeout`` so that a prober reaped it). portalocker notices it on the
holder's side; this backend then logs an error and refuses the run's further write
locks in that process (``StorageError``), so a revoked executor stops writing instead
of racing the next one. See docs/scaling.md.

Keys and channels (``prefix`` defaults to ``wfstate``)::

    <prefix>:<id>:write        channel of the write lock
    <prefix>:<id>:run          channel of the run lock
    <prefix>:<id>:run:owner    JSON {"holder": <holder_id>, "owner": {pid, host, since}}

Pub/sub channels are global to a Redis server (not per database), so the prefix is what
separates two deployments (or two test runs) sharing one server.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import portalocker
import redis
from portalocker.redis import RedisLock, RedisLockMode

from wfstate.exceptions import RunLocked, StateLocked, StorageError
from wfstate.records import RunLockOwner, owner_from, unknown_owner
from wfstate.stores.locks import LockBackend, describe_owner, owner_info

logger = logging.getLogger("wfstate.stores")

# Seconds a waiting writer sleeps between attempts (jittered by portalocker). A write
# lock is held for a millisecond or two, so short; portalocker's default is 0.25 s.
WRITE_CHECK_INTERVAL = 0.005
# Seconds the keep-alive thread blocks per read. It answers pings at once whatever the
# value; the value is how long a release waits for the thread to notice it must stop,
# so it is short for the write lock (taken at every checkpoint).
WRITE_THREAD_SLEEP = 0.002
RUN_THREAD_SLEEP = 0.02
# How long a prober waits for a silent subscriber before reaping it as dead. A dead
# process's subscription vanishes with its socket (no wait at all); this only bounds a
# live but silent holder. Generous, so that a loaded machine never reaps a live one.
UNAVAILABLE_TIMEOUT = 2.0
# A taker of the run lock that finds the channel busy with other takers (two deliveries
# of one run racing) retries this long, every RUN_CHECK_INTERVAL, before it reports the
# run as locked. A conclusive answer ("held") ends it at once; only a probe spoilt by a
# rival leaving mid-probe is retried, and the elected rival must have the time to win,
# or both takers would give up and nobody execute the run.
RUN_LOCK_SETTLE = 1.0
RUN_CHECK_INTERVAL = 0.01
# A holder writes its owner record just after locking: how long a reader waits for it.
OWNER_SETTLE = 0.2


class RedisLockBackend(LockBackend):
    """Run locks and write locks in Redis, for workers on several hosts.

    Args:
        directory: the states directory (unused: Redis holds the locks; kept so that
            every backend is built the same way).
        file_mode: unused, as ``directory``.
        redis_url: the Redis server every worker and web process shares (one standalone
            server: ``RedisLock`` counts subscribers with ``PUBSUB NUMSUB``, which a
            cluster does not answer globally).
        prefix: of every channel and key, to share a server between deployments.
    """

    def __init__(
        self,
        directory: Path,
        file_mode: int = 0o600,
        redis_url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "wfstate",
    ) -> None:
        super().__init__()
        self.directory = directory
        self.file_mode = file_mode
        self.redis_url = redis_url
        self.prefix = prefix
        self._connection: redis.Redis | None = None
        self._connection_guard = threading.Lock()
        # Run locks this process holds, to refuse writes once one of them is lost.
        self._run_locks: dict[str, RedisLock] = {}

    def __repr__(self) -> str:
        return f"RedisLockBackend({self.redis_url!r}, prefix={self.prefix!r})"

    # --- Redis -----------------------------------------------------------------------------

    @property
    def connection(self) -> redis.Redis:
        """One client (and pool) per backend, shared by every lock it makes.

        ``RedisLock`` never closes a connection it was given, and derives each
        subscription from a private, never-reconnecting copy of this pool's settings.
        redis-py pools reset themselves in a forked child (RQ forks a work horse per job).
        """
        if self._connection is None:
            with self._connection_guard:
                if self._connection is None:
                    self._connection = redis.Redis.from_url(
                        self.redis_url,
                        decode_responses=True,  # RedisLock compares decoded payloads
                        health_check_interval=10,
                        socket_connect_timeout=5,
                    )
        return self._connection

    def _channel(self, workflow_id: str, kind: str) -> str:
        return f"{self.prefix}:{workflow_id}:{kind}"

    def _owner_key(self, workflow_id: str) -> str:
        return f"{self.prefix}:{workflow_id}:run:owner"

    def _lock(self, workflow_id: str, kind: str, **kwargs: Any) -> RedisLock:
        return RedisLock(
            self._channel(workflow_id, kind),
            connection=self.connection,
            unavailable_timeout=UNAVAILABLE_TIMEOUT,
            # Never KeyboardInterrupt the main thread on a loss: a worker would die
            # mid-step. The loss is logged and refuses further writes (see _lost).
            interrupt_on_lost=False,
            on_lost=self._lost,
            **kwargs,
        )

    @staticmethod
    def _lost(lock: RedisLock) -> None:
        # Runs on portalocker's keep-alive thread: log only.
        logger.error(
            "lost the Redis lock %s (connection to Redis cut, or reaped as silent): "
            "another process may take it",
            lock.channel,
        )

    @staticmethod
    def _redis_error(action: str, exc: Exception) -> StorageError:
        return StorageError(f"could not {action} in Redis: {exc}")

    # --- the write lock -------------------------------------------------------------------

    @contextlib.contextmanager
    def _acquire_write(self, workflow_id: str, timeout: float) -> Iterator[None]:
        run_lock = self._run_locks.get(workflow_id)
        if run_lock is not None and run_lock.lost:
            raise StorageError(
                f"run {workflow_id}: this process lost its run lock in Redis; "
                "it must not write the run any more"
            )
        lock = self._lock(
            workflow_id,
            "write",
            thread_sleep_time=WRITE_THREAD_SLEEP,
            check_interval=WRITE_CHECK_INTERVAL,
        )
        try:
            lock.acquire(timeout=timeout, fail_when_locked=False)
        except portalocker.AlreadyLocked:
            raise StateLocked(
                f"run {workflow_id}: write lock not acquired within {timeout:g}s "
                f"(Redis channel {lock.channel})",
                workflow_id=workflow_id,
            ) from None
        except (redis.RedisError, portalocker.LockException) as exc:
            raise self._redis_error(f"take the write lock of run {workflow_id}", exc) from exc
        try:
            yield
        finally:
            _stop_keep_alive(lock)
            self._release(lock)

    @staticmethod
    def _release(lock: RedisLock) -> None:
        try:
            lock.release()
        except Exception:
            # The subscription's socket is closed whatever failed, so Redis frees the
            # lock anyway; a failed release must not fail a save that succeeded.
            logger.warning("could not release the Redis lock %s cleanly", lock.channel)

    # --- the run lock ---------------------------------------------------------------------

    @contextlib.contextmanager
    def run_lock(self, workflow_id: str) -> Iterator[RunLockOwner]:
        lock = self._lock(
            workflow_id,
            "run",
            thread_sleep_time=RUN_THREAD_SLEEP,
            check_interval=RUN_CHECK_INTERVAL,
        )
        try:
            # fail_when_locked: the first conclusive probe that shows a holder raises at
            # once; the short timeout only covers inconclusive probes (two takers racing
            # for a free lock, of which portalocker elects exactly one).
            lock.acquire(timeout=RUN_LOCK_SETTLE, fail_when_locked=True)
        except portalocker.AlreadyLocked:
            owner = self.run_lock_owner(workflow_id)
            raise RunLocked(
                f"run {workflow_id} is being executed by {describe_owner(owner)}",
                workflow_id=workflow_id,
                owner=owner,
            ) from None
        except (redis.RedisError, portalocker.LockException) as exc:
            raise self._redis_error(f"take the run lock of run {workflow_id}", exc) from exc
        info = owner_info()
        key = self._owner_key(workflow_id)
        try:
            try:
                # Overwrites whatever a killed holder left: we hold the lock now.
                self.connection.set(key, orjson.dumps({"holder": lock.holder_id, "owner": info}))
            except redis.RedisError as exc:
                raise self._redis_error(f"record the owner of run {workflow_id}", exc) from exc
            self._run_locks[workflow_id] = lock
            yield info
        finally:
            self._run_locks.pop(workflow_id, None)
            with contextlib.suppress(redis.RedisError):
                self._delete_if_holder(key, lock.holder_id)
            if lock.lost:
                logger.error(
                    "run %s: the run lock was lost while the run executed here", workflow_id
                )
            self._release(lock)

    def _delete_if_holder(self, key: str, holder_id: str) -> None:
        """Delete the owner key only if it is still ours (a new holder may have written)."""
        with self.connection.pipeline() as pipe:
            try:
                pipe.watch(key)
                raw = pipe.get(key)
                if raw is None or _holder_of(raw) != holder_id:
                    return
                pipe.multi()
                pipe.delete(key)
                pipe.execute()
            except redis.WatchError:
                return  # rewritten meanwhile by the next holder: theirs now

    def run_lock_owner(self, workflow_id: str) -> RunLockOwner | None:
        channel = self._channel(workflow_id, "run")
        key = self._owner_key(workflow_id)
        try:
            if not self.connection.pubsub_numsub(channel)[0][1]:
                return None  # nobody on the channel: the lock is free
            # Someone is subscribed: the holder, or takers that are about to give up.
            # Ask who holds it, and believe only an owner record written by a live holder.
            deadline = time.monotonic() + OWNER_SETTLE
            while True:
                try:
                    holders = _live_holders(RedisLock(channel, connection=self.connection))
                except portalocker.LockException:
                    return unknown_owner()  # a subscriber that does not answer: held
                if not holders:
                    return None
                raw = self.connection.get(key)
                if raw is not None and _holder_of(raw) in holders:
                    return owner_from(orjson.loads(raw).get("owner")) or unknown_owner()
                # Held, but the record is missing or a dead holder's: a holder writes it
                # just after locking, so look again shortly.
                if time.monotonic() >= deadline:
                    return unknown_owner()  # held by somebody who says nothing (yet)
                time.sleep(0.01)
        except (redis.RedisError, portalocker.LockException, orjson.JSONDecodeError) as exc:
            raise self._redis_error(f"read the owner of run {workflow_id}", exc) from exc

    def forget(self, workflow_id: str) -> None:
        """Delete the run's owner record: ours if this process holds the run lock (a
        delete), else only if nobody holds it (a live holder's record stays)."""
        key = self._owner_key(workflow_id)
        with contextlib.suppress(redis.RedisError, StorageError):
            held = self._run_locks.get(workflow_id)
            if held is not None:
                self._delete_if_holder(key, held.holder_id)
            elif self.run_lock_owner(workflow_id) is None:
                self.connection.delete(key)


def _stop_keep_alive(lock: RedisLock) -> None:
    """Stop a write lock's keep-alive thread, so that ``release()`` has none to stop.

    portalocker's release joins the thread and then sleeps a fixed 10 ms, at every
    release: with the write lock taken at every checkpoint that was 12.5 ms a save
    (2.2 ms without it), and two of them stood between ``POST runs/`` and the first
    step. Stopping and joining the thread here does what release would (the stopped
    thread closes the subscription itself, which is the release) without the pause;
    ``release()`` then cleans up the rest. Only for the write lock: a waiter that
    still sees the subscription for a moment just polls again, where a run lock's
    taker (which never waits) would report the run as held.
    """
    thread = getattr(lock, "thread", None)
    if thread is None:
        return
    with contextlib.suppress(Exception):
        thread.stop()
        if thread.ident is not None and thread is not threading.current_thread():
            thread.join()
        lock.thread = None


def _holder_of(raw: str | bytes) -> str | None:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    holder = data.get("holder") if isinstance(data, dict) else None
    return holder if isinstance(holder, str) else None


def _live_holders(probe: RedisLock) -> set[str]:
    """Holder ids that answer on the channel now and hold it (not mere takers)."""
    return {
        holder.holder_id
        for holder in probe.probe(timeout=UNAVAILABLE_TIMEOUT)
        if holder.mode == RedisLockMode.EXCLUSIVE
    }
