"""A job store in Redis: job state shared by every worker on every machine.

Key layout (``P`` is the prefix, ``fanout:`` by default):

- ``P job:<id>``: hash, one per job. ``data`` holds the record as JSON minus
  the fields below; ``status``, ``cancel`` ("0"/"1"), ``lease``, ``worker``,
  ``expires`` are plain fields so that Lua scripts can read and change them
  without decoding JSON; ``body`` is the result body as raw bytes; ``ix``,
  ``ixm`` and ``idem`` name the index entries the job owns, so that deleting
  it cleans them up.
- ``P owner:-`` (ownerless jobs) and ``P owner:=<quoted owner>``: sorted set,
  all scores 0, members ``<16 hex digits of created_at>:<id>`` so that
  lexicographic order is (created_at, id) exactly; listed with ZREVRANGEBYLEX.
- ``P leases``: sorted set of active job ids by lease_until (for ``lapsed``).
- ``P expiries``: sorted set of finished job ids by expires_at (for ``sweep``).
- ``P idem:<owner tag>:<key>``: string, the job id an idempotency key maps to,
  expiring with the job.

Every write that must be atomic is one Lua script: Redis runs a script with
nothing interleaved, which makes ``replace`` a true compare-and-set and makes
``create`` with an idempotency key race-free across machines.
"""

from __future__ import annotations

import json
import math
import struct
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace as evolve
from typing import Any, cast
from urllib.parse import quote

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fanout.jobs.memory_store import ACTIVE, check_limit, decode_cursor, page_of
from fanout.jobs.model import JobRecord, JobStatus, Progress, StoredResponse
from fanout.jobs.store import Page, StaleRecord, StoreUnavailable

_ACTIVE_NAMES = frozenset(str(status) for status in ACTIVE)

#: Ids per script call in sweep and renew_leases: bounds how long one script
#: blocks the server (Redis serves nothing else while a script runs).
_BATCH = 500

#: Seconds a call waits for a free pooled connection before StoreUnavailable.
_POOL_WAIT = 5.0

# Removes one job and every index entry it owns (shared by delete, sweep, create).
_FORGET = """
local function forget(key, id, leases, expiries)
  local m = redis.call('HMGET', key, 'ix', 'ixm', 'idem')
  redis.call('DEL', key)
  redis.call('ZREM', leases, id)
  redis.call('ZREM', expiries, id)
  if m[1] then redis.call('ZREM', m[1], m[2]) end
  if m[3] and redis.call('GET', m[3]) == id then redis.call('DEL', m[3]) end
end
"""

# KEYS: job, owner index, leases, expiries[, idem]
# ARGV: id, index member, lease score|'', expiry score|'', idem PEXPIREAT ms|'',
#       now, prefix, field, value, ...
# Returns {0} when stored, {1, fields...} with the job already stored under
# this id or (live) under this idempotency key.
_CREATE = (
    _FORGET
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {1, redis.call('HGETALL', KEYS[1])}
end
if #KEYS >= 5 then
  local other = redis.call('GET', KEYS[5])
  if other then
    local okey = ARGV[7] .. 'job:' .. other
    if redis.call('EXISTS', okey) == 1 then
      local exp = redis.call('HGET', okey, 'expires')
      if not exp or tonumber(exp) >= tonumber(ARGV[6]) then
        return {1, redis.call('HGETALL', okey)}
      end
      -- Expired: gone as far as callers can tell, so the key is free again.
      forget(okey, other, KEYS[3], KEYS[4])
    end
  end
  redis.call('SET', KEYS[5], ARGV[1])
  if ARGV[5] ~= '' then redis.call('PEXPIREAT', KEYS[5], ARGV[5]) end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('ZADD', KEYS[2], 0, ARGV[2])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1]) end
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1]) end
return {0}
"""
)

# KEYS: job, owner index, leases, expiries[, idem]
# ARGV: expected status, id, index member, final '1'|'0', cancel '1'|'0',
#       lease|'', worker|'', expiry score|'', idem PEXPIREAT ms|'',
#       lease before|'', field, value, ...
# Returns false when the stored status is not the expected one (or the job is
# gone, or its lease does not end before "lease before"), else {cancel, lease}
# as written.
_REPLACE = """
local old = redis.call('HMGET', KEYS[1], 'status', 'cancel', 'lease', 'worker', 'ix', 'ixm', 'idem')
if old[1] ~= ARGV[1] then return false end
-- Taking over a lapsed job: a renewal since the caller's read wins.
if ARGV[10] ~= '' and (not old[3] or tonumber(old[3]) >= tonumber(ARGV[10])) then
  return false
end
local id = ARGV[2]
-- A cancel requested since the caller read the record must not be lost.
local cancel = ARGV[5]
if old[2] == '1' then cancel = '1' end
-- Nor a lease renewed since then by the same worker: an older copy written
-- back would shorten it and get a live job marked lapsed.
local lease = ARGV[6]
if lease ~= '' and ARGV[4] == '0' and old[3] and old[4] == ARGV[7]
    and tonumber(old[3]) > tonumber(lease) then
  lease = old[3]
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'cancel', cancel, unpack(ARGV, 11))
if lease ~= '' then redis.call('HSET', KEYS[1], 'lease', lease) end
if lease ~= '' and ARGV[4] == '0' then
  redis.call('ZADD', KEYS[3], lease, id)
else
  redis.call('ZREM', KEYS[3], id)
end
if ARGV[8] ~= '' then
  redis.call('ZADD', KEYS[4], ARGV[8], id)
else
  redis.call('ZREM', KEYS[4], id)
end
if old[5] and (old[5] ~= KEYS[2] or old[6] ~= ARGV[3]) then
  redis.call('ZREM', old[5], old[6])
end
redis.call('ZADD', KEYS[2], 0, ARGV[3])
local idem = KEYS[5]
if old[7] and old[7] ~= idem and redis.call('GET', old[7]) == id then
  redis.call('DEL', old[7])
end
if idem then
  redis.call('SET', idem, id, 'NX')
  if ARGV[9] ~= '' and redis.call('GET', idem) == id then
    redis.call('PEXPIREAT', idem, ARGV[9])
  end
end
return {cancel, lease}
"""

# KEYS: job. Returns the job's fields after flagging it (false if unknown).
_REQUEST_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if status == 'pending' or status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: job, leases, expiries. ARGV: id. Returns 1 if the job existed.
_DELETE = (
    _FORGET
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
forget(KEYS[1], ARGV[1], KEYS[2], KEYS[3])
return 1
"""
)

# KEYS: leases, expiries. ARGV: now, prefix, id, ... Returns how many were deleted.
# Every id given leaves the expiry set below ``now`` (deleted, re-scored or
# dropped), so a caller looping until the set has nothing below ``now`` ends.
_SWEEP = (
    _FORGET
    + """
local now = tonumber(ARGV[1])
local deleted = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local key = ARGV[2] .. 'job:' .. id
  local m = redis.call('HMGET', key, 'status', 'expires')
  local final = m[1] and m[1] ~= 'pending' and m[1] ~= 'running'
  if final and m[2] and tonumber(m[2]) < now then
    forget(key, id, KEYS[1], KEYS[2])
    deleted = deleted + 1
  elseif final and m[2] then
    redis.call('ZADD', KEYS[2], m[2], id)
  else
    redis.call('ZREM', KEYS[2], id)
  end
end
return deleted
"""
)

# KEYS: leases. ARGV: worker, until, prefix, id, ...
_RENEW = """
for i = 4, #ARGV do
  local id = ARGV[i]
  local key = ARGV[3] .. 'job:' .. id
  local m = redis.call('HMGET', key, 'status', 'worker')
  if (m[1] == 'pending' or m[1] == 'running') and m[2] == ARGV[1] then
    redis.call('HSET', key, 'lease', ARGV[2])
    redis.call('ZADD', KEYS[1], ARGV[2], id)
  end
end
return 0
"""


def _order_key(created_at: float) -> str:
    """16 hex digits whose string order is the numeric order of ``created_at``."""
    (bits,) = struct.unpack(">Q", struct.pack(">d", created_at))
    # IEEE 754 order trick: flip all bits of negatives, the sign bit of the rest.
    bits = bits ^ 0xFFFF_FFFF_FFFF_FFFF if bits >> 63 else bits | (1 << 63)
    return f"{bits:016x}"


def _member(created_at: float, job_id: str) -> str:
    return f"{_order_key(created_at)}:{job_id}"


def _owner_tag(owner: str | None) -> str:
    # Quoted, an owner holds no ':' (keys stay unambiguous) and never starts
    # with '=' or is '-', so None and every string map to distinct tags.
    return "-" if owner is None else "=" + quote(owner, safe="")


def _score(value: float) -> str:
    # repr round-trips a float exactly; Redis and Lua parse it back to the same double.
    return repr(value)


def _expired(record: JobRecord, now: float) -> bool:
    return record.expires_at is not None and record.expires_at < now


def _texts(values: Sequence[object]) -> list[str]:
    # Members come back as bytes (decode_responses is off, for the bodies' sake).
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _encode(record: JobRecord) -> dict[str, str | bytes]:
    """The hash fields of a record (cancel and lease included)."""
    result = record.result
    data = {
        "id": record.id,
        "kind": record.kind,
        "owner": record.owner,
        "created_at": record.created_at,
        "params": record.params,
        "progress": [record.progress.done, record.progress.total, record.progress.message],
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "expires_at": record.expires_at,
        "result": None
        if result is None
        else {"status": result.status, "headers": [list(h) for h in result.headers]},
        "error": record.error,
        "idempotency_key": record.idempotency_key,
        "worker": record.worker,
        "timeout": record.timeout,
    }
    fields: dict[str, str | bytes] = {
        "data": json.dumps(data, separators=(",", ":")),
        "status": record.status.value,
        # Also beside data: count_active reads kind and status alone.
        "kind": record.kind,
        "cancel": "1" if record.cancel_requested else "0",
    }
    if record.lease_until is not None:
        fields["lease"] = _score(record.lease_until)
    if record.worker is not None:
        fields["worker"] = record.worker
    if record.expires_at is not None:
        fields["expires"] = _score(record.expires_at)
    if result is not None:
        # Bytes as they are: a body need not be UTF-8, and base64 would cost a third more.
        fields["body"] = result.body
    return fields


def _decode(fields: dict[bytes, bytes]) -> JobRecord:
    """The record stored in a job hash."""
    data: dict[str, Any] = json.loads(fields[b"data"])
    done, total, message = data["progress"]
    stored_result = data["result"]
    result = (
        None
        if stored_result is None
        else StoredResponse(
            status=stored_result["status"],
            headers=tuple((name, value) for name, value in stored_result["headers"]),
            body=fields.get(b"body", b""),
        )
    )
    lease = fields.get(b"lease")
    return JobRecord(
        id=data["id"],
        kind=data["kind"],
        owner=data["owner"],
        status=JobStatus(fields[b"status"].decode()),
        created_at=data["created_at"],
        params=data["params"],
        progress=Progress(done=done, total=total, message=message),
        started_at=data["started_at"],
        finished_at=data["finished_at"],
        expires_at=data["expires_at"],
        result=result,
        error=data["error"],
        idempotency_key=data["idempotency_key"],
        worker=data["worker"],
        lease_until=None if lease is None else float(lease),
        cancel_requested=fields.get(b"cancel") == b"1",
        timeout=data["timeout"],
    )


@contextmanager
def _unavailable() -> Iterator[None]:
    """Turn "cannot talk to Redis" errors into StoreUnavailable."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, TimeoutError, ReadOnlyError) as exc:
        # ReadOnlyError: a replica answered (failover in progress); it wrote nothing.
        raise StoreUnavailable(f"redis: {exc}") from exc


class RedisStore:
    """JobStore in Redis, for several machines sharing job state.

    ``timeout`` bounds connecting and each reply, so a dead or unreachable
    server fails calls within about that long instead of hanging them;
    ``max_connections`` caps the connections of this process to the server.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "fanout:",
        timeout: float = 1.0,
        max_connections: int = 50,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.max_connections = max_connections
        self._client: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}

    # Keys

    def _job_key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def _index_key(self, owner: str | None) -> str:
        return f"{self.prefix}owner:{_owner_tag(owner)}"

    def _idem_key(self, owner: str | None, key: str) -> str:
        return f"{self.prefix}idem:{_owner_tag(owner)}:{key}"

    @property
    def _leases(self) -> str:
        return f"{self.prefix}leases"

    @property
    def _expiries(self) -> str:
        return f"{self.prefix}expiries"

    # Connection

    @property
    def redis(self) -> Redis:
        """The open client (RuntimeError before ``open``)."""
        if self._client is None:
            raise RuntimeError("RedisStore is not open")
        return self._client

    async def open(self) -> None:
        """Connect and check that the server answers (StoreUnavailable if not)."""
        if self._client is not None:
            return
        # A blocking pool: when every connection is busy a call waits for one
        # (up to _POOL_WAIT) instead of failing at once as the default pool does.
        pool = BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            timeout=_POOL_WAIT,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            # One immediate retry, on connection errors only: it replaces a
            # pooled connection the server closed while idle, yet a dead server
            # still fails fast. Timeouts are not retried: they already waited.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        client = Redis.from_pool(pool)  # owns the pool: aclose() closes both
        scripts = {
            "create": _CREATE,
            "replace": _REPLACE,
            "request_cancel": _REQUEST_CANCEL,
            "delete": _DELETE,
            "sweep": _SWEEP,
            "renew": _RENEW,
        }
        self._scripts = {name: client.register_script(text) for name, text in scripts.items()}
        try:
            with _unavailable():
                await client.ping()
        except BaseException:
            await client.aclose()
            raise
        self._client = client

    async def close(self) -> None:
        """Close the client and its connection pool."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the server answers."""
        with _unavailable():
            await self.redis.ping()

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[str | bytes]) -> Any:
        script = self._scripts[name]
        with _unavailable():
            return await script(keys=list(keys), args=list(args), client=self.redis)

    # Records

    async def create(self, record: JobRecord) -> JobRecord:
        """Store a new job, or return the live one with the same owner and idempotency key."""
        fields = _encode(record)
        index, member = self._index_key(record.owner), _member(record.created_at, record.id)
        fields["ix"], fields["ixm"] = index, member
        keys = [self._job_key(record.id), index, self._leases, self._expiries]
        if record.idempotency_key is not None:
            idem = self._idem_key(record.owner, record.idempotency_key)
            fields["idem"] = idem
            keys.append(idem)
        active = record.status in ACTIVE
        args: list[str | bytes] = [
            record.id,
            member,
            _score(record.lease_until) if active and record.lease_until is not None else "",
            _score(record.expires_at) if not active and record.expires_at is not None else "",
            _ms(record.expires_at) if record.expires_at is not None else "",
            _score(time.time()),
            self.prefix,
        ]
        for name, value in fields.items():
            args += [name, value]
        reply = await self._run("create", keys, args)
        if reply[0] == 0:
            return record
        existing = _decode(_pairs(reply[1]))
        if existing.id == record.id and existing != record:
            raise ValueError(f"job {record.id} already exists")
        # The live job holding this idempotency key; or this very record, stored
        # by an earlier try whose reply was lost (the client retries once).
        return existing

    async def get(self, job_id: str) -> JobRecord | None:
        """The job, or None if unknown or expired."""
        with _unavailable():
            fields = await self.redis.hgetall(self._job_key(job_id))
        if not fields:
            return None
        record = _decode(cast(dict[bytes, bytes], fields))  # decode_responses is off
        return None if _expired(record, time.time()) else record

    async def replace(
        self, record: JobRecord, *, expected: JobStatus, lease_before: float | None = None
    ) -> JobRecord:
        """Write ``record`` if the stored job still has status ``expected`` (and, with
        ``lease_before``, a lease that ended before it), atomically."""
        fields = _encode(record)
        del fields["cancel"]
        lease = fields.pop("lease", "")
        index, member = self._index_key(record.owner), _member(record.created_at, record.id)
        fields["ix"], fields["ixm"] = index, member
        keys = [self._job_key(record.id), index, self._leases, self._expiries]
        if record.idempotency_key is not None:
            idem = self._idem_key(record.owner, record.idempotency_key)
            fields["idem"] = idem
            keys.append(idem)
        final = record.status.final
        args: list[str | bytes] = [
            expected.value,
            record.id,
            member,
            "1" if final else "0",
            "1" if record.cancel_requested else "0",
            lease,
            record.worker or "",
            _score(record.expires_at) if final and record.expires_at is not None else "",
            _ms(record.expires_at) if record.expires_at is not None else "",
            _score(lease_before) if lease_before is not None else "",
        ]
        for name, value in fields.items():
            args += [name, value]
        reply = await self._run("replace", keys, args)
        if reply is None:
            raise StaleRecord(f"job {record.id} is no longer {expected}")
        cancel, written_lease = reply
        return evolve(
            record,
            cancel_requested=cancel == b"1",
            lease_until=float(written_lease) if written_lease else None,
        )

    async def find_by_key(self, owner: str | None, key: str) -> JobRecord | None:
        """The live job that ``owner`` started with this idempotency key, if any."""
        with _unavailable():
            job_id = await self.redis.get(self._idem_key(owner, key))
        if job_id is None:
            return None
        record = await self.get(_texts([job_id])[0])
        if record is None or record.owner != owner or record.idempotency_key != key:
            return None  # the key outlived its job for a moment (it expires in ms)
        return record

    async def request_cancel(self, job_id: str) -> JobRecord | None:
        """Flag a pending or running job for cancelling; return it as now stored."""
        reply = await self._run("request_cancel", [self._job_key(job_id)], [])
        if reply is None:
            return None
        record = _decode(_pairs(reply))
        return None if _expired(record, time.time()) else record

    async def delete(self, job_id: str) -> bool:
        """Forget the job; True if it existed."""
        keys = [self._job_key(job_id), self._leases, self._expiries]
        return bool(await self._run("delete", keys, [job_id]))

    async def _fetch(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        """The stored records of these ids (None where missing), in one round trip."""
        if not job_ids:
            return []
        with _unavailable():
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hgetall(self._job_key(job_id))
                replies: list[dict[bytes, bytes]] = await pipe.execute()
        return [_decode(fields) if fields else None for fields in replies]

    async def list_jobs(
        self,
        *,
        owner: str | None,
        status: JobStatus | None = None,
        kind: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Page:
        """Jobs of ``owner`` (None: ownerless ones), newest first, filtered and paged."""
        check_limit(limit)
        start = "+" if cursor is None else "(" + _member(*decode_cursor(cursor))
        index = self._index_key(owner)
        # Filters and expired jobs may drop entries: read in batches until the
        # page and one more (telling whether there is a next page) are found.
        batch = max(limit + 1, 100)
        now = time.time()
        found: list[JobRecord] = []
        while len(found) <= limit:
            with _unavailable():
                members = _texts(
                    await self.redis.zrevrangebylex(index, start, "-", start=0, num=batch)
                )
            if not members:
                break
            ids = [m.split(":", 1)[1] for m in members]
            for record in await self._fetch(ids):
                if (
                    record is not None
                    and (status is None or record.status == status)
                    and (kind is None or record.kind == kind)
                    and not _expired(record, now)
                ):
                    found.append(record)
                    if len(found) > limit:
                        break
            if len(members) < batch:
                break
            start = "(" + members[-1]
        return page_of(found, limit)

    # Leases, cancels, expiry

    async def renew_leases(self, worker: str, job_ids: Sequence[str], until: float) -> None:
        """Extend the lease of these pending or running jobs held by ``worker``."""
        ids = list(dict.fromkeys(job_ids))
        for i in range(0, len(ids), _BATCH):
            args = [worker, _score(until), self.prefix, *ids[i : i + _BATCH]]
            await self._run("renew", [self._leases], args)

    async def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        """Of these ids, the ones whose cancel has been requested or that are gone
        (one round trip)."""
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return set()
        with _unavailable():
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hget(self._job_key(job_id), "cancel")
                flags: list[bytes | None] = await pipe.execute()
        # A job's hash always has the field: None means the job is gone.
        return {job_id for job_id, flag in zip(ids, flags, strict=True) if flag != b"0"}

    async def lapsed(self, now: float) -> list[JobRecord]:
        """Pending or running jobs whose lease ended before ``now``."""
        with _unavailable():
            ids = _texts(await self.redis.zrangebyscore(self._leases, "-inf", "(" + _score(now)))
        records = await self._fetch(ids)
        return [
            r
            for r in records
            if r is not None
            and r.status in ACTIVE
            and r.lease_until is not None
            and r.lease_until < now
        ]

    async def count_active(self) -> dict[tuple[str, str], int]:
        """How many pending and running jobs there are, by (kind, status).

        Every active job holds a lease, so the lease index lists them all; of
        each, only its kind and status are fetched, not the whole record.
        """
        with _unavailable():
            ids = _texts(await self.redis.zrange(self._leases, 0, -1))
            if not ids:
                return {}
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hmget(self._job_key(job_id), ["kind", "status"])
                replies: list[list[bytes | None]] = await pipe.execute()
            counts: Counter[tuple[str, str]] = Counter()
            for job_id, (kind, status) in zip(ids, replies, strict=True):
                if status is None or status.decode() not in _ACTIVE_NAMES:
                    continue  # deleted, or finished, since the index was read
                if kind is None:
                    # Written before records carried kind beside data.
                    data = await self.redis.hget(self._job_key(job_id), "data")
                    if data is None:
                        continue
                    kind = json.loads(data)["kind"].encode()
                counts[kind.decode(), status.decode()] += 1
        return dict(counts)

    async def sweep(self, now: float) -> int:
        """Delete finished jobs whose expires_at has passed; return how many."""
        deleted = 0
        while True:
            with _unavailable():
                ids = _texts(
                    await self.redis.zrangebyscore(
                        self._expiries, "-inf", "(" + _score(now), start=0, num=_BATCH
                    )
                )
            if not ids:
                return deleted
            args = [_score(now), self.prefix, *ids]
            deleted += int(await self._run("sweep", [self._leases, self._expiries], args))


def _ms(seconds: float) -> str:
    """Unix seconds as the whole milliseconds PEXPIREAT takes, rounded up."""
    return str(math.ceil(seconds * 1000))
