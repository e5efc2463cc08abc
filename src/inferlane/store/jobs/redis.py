"""The scale-out job store: Redis, shared by any number of workers on any number of hosts.

    store = RedisJobStore("redis://jobs-redis:6379/0")      # needs: pip install 'inferlane[redis]'

Key layout (``P`` is the prefix, ``inferlane`` by default; ``M`` a model name, always last in a key)::

    P:job:<id>                    hash    every JobRecord field (absent = None; floats as repr; result bytes)
    P:queued:M                    zset    queued job ids by available_at       (claim, stats)
    P:running:M                   zset    running job ids by lease_until       (claim: expired leases)
    P:expiring                    zset    finished job ids by expires_at       (expire)
    P:created / P:by-model:M      zset    job ids by created_at                (list)
    P:by-status:S / P:by-model-status:S:M   zset by created_at                 (list, stats counts)
    P:models                      set     model names seen by submit           (claim and stats over all models)
    P:idem:<M escaped>:<key>      string  job id, set with SET NX              (idempotency, no tenant)
    P:idem-t:<T esc>:<M esc>:<key> string job id, set with SET NX              (idempotency of tenant T)
    P:tenant:<T>                  zset    job ids of tenant T ('' none) by created_at (list for a tenant)
    P:callbacks                   zset    job ids with a pending callback by callback_at (dispatcher)

Every state change is one Lua script, so it is atomic, and complete/fail/extend are fenced: they
act only while the job is running and held by the calling worker. Times come from the caller as
Python ``repr`` strings (exact round trip); Lua only compares them. The scripts touch keys they
compute, so use one Redis server (or a Cluster with every key in one hash slot: prefix ``{inferlane}``).
Durability is the server's: run it with ``appendonly yes`` and ``appendfsync always`` for a submit
to be on disk before it returns (``everysec`` may lose the last second on a power cut).
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING, Any, cast

from inferlane.core.errors import ConfigError, Unavailable
from inferlane.core.urls import redact, redis_url
from inferlane.store.jobs.base import (
    DEFAULT_TTL_S,
    RECORD_FIELDS,
    SUMMARY_FIELDS,
    CallbackStatus,
    JobRecord,
    JobStats,
    JobStatus,
    ModelBacklog,
)

if TYPE_CHECKING:
    import redis

INSTALL_REDIS = "the Redis job store needs redis-py: pip install 'inferlane[redis]'"

_FLOATS = frozenset({"created_at", "updated_at", "started_at", "finished_at", "available_at", "lease_until",
                     "expires_at", "callback_at"})
_INTS = frozenset({"attempts", "max_attempts", "callback_attempts", "request_header_length"})
_SUMMARY_ARGS = [name.encode() for name in SUMMARY_FIELDS]
_LIST_PAGE = 500
_UNAVAILABLE_REPLIES = ("READONLY", "LOADING", "MASTERDOWN", "MISCONF", "OOM", "NOREPLICAS", "TRYAGAIN")
"""Error replies of a server that cannot take writes now (a failover, a full disk or memory): 503s."""
_BYTES = frozenset({"request", "result"})

# Shared by every script: ARGV[1] is the key prefix. index() moves a job between the list indexes.
_PRELUDE = """
local P = ARGV[1]
local function job_key(id) return P .. ':job:' .. id end
local function index(id, model, created, from, to)
  if from then
    redis.call('ZREM', P .. ':by-status:' .. from, id)
    redis.call('ZREM', P .. ':by-model-status:' .. from .. ':' .. model, id)
  end
  redis.call('ZADD', P .. ':by-status:' .. to, created, id)
  redis.call('ZADD', P .. ':by-model-status:' .. to .. ':' .. model, created, id)
end
-- a finished job's callback becomes pending, due now, in the same script that finishes it
local function callback_pending(id, key, now)
  if redis.call('HEXISTS', key, 'callback_url') == 1 then
    redis.call('HSET', key, 'callback_status', 'pending', 'callback_at', now)
    redis.call('ZADD', P .. ':callbacks', now, id)
  end
end
"""

# ARGV: P, id, model, idempotency key name or '', created_at, available_at, tenant index key or '',
# field, value, ...  Returns {created (1/0), HGETALL of the stored job}.
_SUBMIT = """
local id, model, idem, created, available, tenant = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local key = job_key(id)
if redis.call('EXISTS', key) == 1 then return {0, redis.call('HGETALL', key)} end
if idem ~= '' and not redis.call('SET', idem, id, 'NX') then
  local existing = job_key(redis.call('GET', idem))
  if redis.call('EXISTS', existing) == 1 then return {0, redis.call('HGETALL', existing)} end
  redis.call('SET', idem, id)  -- its job was deleted by hand: the key is free again
end
redis.call('HSET', key, unpack(ARGV, 8))
if tenant ~= '' then redis.call('ZADD', tenant, created, id) end
redis.call('SADD', P .. ':models', model)
redis.call('ZADD', P .. ':queued:' .. model, available, id)
redis.call('ZADD', P .. ':created', created, id)
redis.call('ZADD', P .. ':by-model:' .. model, created, id)
index(id, model, created, nil, 'queued')
return {1, redis.call('HGETALL', key)}
"""

# ARGV: P, worker, now, lease_until, expires_at (for a dead letter), '*' or '+', model, ...
# Takes the job claimable longest over the models; returns its HGETALL, or false.
_CLAIM = """
local worker, now, lease_until, dead_expires = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local models
if ARGV[6] == '*' then models = redis.call('SMEMBERS', P .. ':models') else models = {unpack(ARGV, 7)} end
while true do
  local best_id, best_score, best_model, best_kind
  for _, m in ipairs(models) do
    local q = redis.call('ZRANGEBYSCORE', P .. ':queued:' .. m, '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1)
    if q[1] and (best_score == nil or tonumber(q[2]) < best_score) then
      best_id, best_score, best_model, best_kind = q[1], tonumber(q[2]), m, 'queued'
    end
    local r = redis.call('ZRANGEBYSCORE', P .. ':running:' .. m, '-inf', '(' .. now, 'WITHSCORES', 'LIMIT', 0, 1)
    if r[1] and (best_score == nil or tonumber(r[2]) < best_score) then
      best_id, best_score, best_model, best_kind = r[1], tonumber(r[2]), m, 'running'
    end
  end
  if best_id == nil then return false end
  local key = job_key(best_id)
  redis.call('ZREM', P .. ':' .. best_kind .. ':' .. best_model, best_id)
  local job = redis.call('HMGET', key, 'status', 'attempts', 'max_attempts', 'created_at', 'worker')
  if job[1] == best_kind then  -- else a stale index entry, now removed: look again
    if best_kind == 'running' and tonumber(job[2]) >= tonumber(job[3]) then
      -- out of attempts with a dead worker: dead-letter it instead of killing another worker
      local err = 'lease expired on attempt ' .. job[2] .. ' of ' .. job[3] .. ': worker ' .. (job[5] or '?')
        .. ' stopped heartbeating (crashed, was killed or hung)'
      redis.call('HSET', key, 'status', 'failed', 'error', err, 'finished_at', now, 'updated_at', now,
                 'expires_at', dead_expires)
      redis.call('HDEL', key, 'lease_until')
      index(best_id, best_model, job[4], 'running', 'failed')
      redis.call('ZADD', P .. ':expiring', dead_expires, best_id)
      callback_pending(best_id, key, now)
    else
      redis.call('HSET', key, 'status', 'running', 'worker', worker, 'lease_until', lease_until,
                 'started_at', now, 'updated_at', now)
      redis.call('HINCRBY', key, 'attempts', 1)
      if best_kind == 'queued' then index(best_id, best_model, job[4], 'queued', 'running') end
      redis.call('ZADD', P .. ':running:' .. best_model, lease_until, best_id)
      return redis.call('HGETALL', key)
    end
  end
end
"""

# ARGV: P, id, worker, lease_until, now. Returns 1 if the worker still holds the job.
_EXTEND = """
local key = job_key(ARGV[2])
local job = redis.call('HMGET', key, 'status', 'worker', 'model')
if job[1] ~= 'running' or job[2] ~= ARGV[3] then return 0 end
redis.call('HSET', key, 'lease_until', ARGV[4], 'updated_at', ARGV[5])
redis.call('ZADD', P .. ':running:' .. job[3], ARGV[4], ARGV[2])
return 1
"""

# ARGV: P, id, worker, now, expires_at, has result '1'/'0', result, has output_uri '1'/'0', output_uri.
_COMPLETE = """
local id = ARGV[2]
local key = job_key(id)
local job = redis.call('HMGET', key, 'status', 'worker', 'model', 'created_at')
if job[1] ~= 'running' or job[2] ~= ARGV[3] then return 0 end
redis.call('HSET', key, 'status', 'succeeded', 'finished_at', ARGV[4], 'updated_at', ARGV[4], 'expires_at', ARGV[5])
if ARGV[6] == '1' then redis.call('HSET', key, 'result', ARGV[7]) else redis.call('HDEL', key, 'result') end
if ARGV[8] == '1' then redis.call('HSET', key, 'output_uri', ARGV[9]) else redis.call('HDEL', key, 'output_uri') end
redis.call('HDEL', key, 'lease_until')
redis.call('ZREM', P .. ':running:' .. job[3], id)
index(id, job[3], job[4], 'running', 'succeeded')
redis.call('ZADD', P .. ':expiring', ARGV[5], id)
callback_pending(id, key, ARGV[4])
return 1
"""

# ARGV: P, id, worker, error, now, retry_at or '', expires_at.
_FAIL = """
local id = ARGV[2]
local key = job_key(id)
local job = redis.call('HMGET', key, 'status', 'worker', 'model', 'created_at', 'attempts', 'max_attempts')
if job[1] ~= 'running' or job[2] ~= ARGV[3] then return 0 end
redis.call('ZREM', P .. ':running:' .. job[3], id)
redis.call('HDEL', key, 'lease_until')
if ARGV[6] ~= '' and tonumber(job[5]) < tonumber(job[6]) then
  redis.call('HSET', key, 'status', 'queued', 'available_at', ARGV[6], 'error', ARGV[4], 'updated_at', ARGV[5])
  redis.call('HDEL', key, 'worker')
  redis.call('ZADD', P .. ':queued:' .. job[3], ARGV[6], id)
  index(id, job[3], job[4], 'running', 'queued')
else
  redis.call('HSET', key, 'status', 'failed', 'error', ARGV[4], 'finished_at', ARGV[5], 'updated_at', ARGV[5],
             'expires_at', ARGV[7])
  index(id, job[3], job[4], 'running', 'failed')
  redis.call('ZADD', P .. ':expiring', ARGV[7], id)
  callback_pending(id, key, ARGV[5])
end
return 1
"""

# ARGV: P, id, now. Returns the job's HGETALL (after cancelling it if it was queued), or false.
_CANCEL = """
local id = ARGV[2]
local key = job_key(id)
local job = redis.call('HMGET', key, 'status', 'model', 'created_at')
if not job[1] then return false end
if job[1] == 'queued' then
  redis.call('HSET', key, 'status', 'cancelled', 'finished_at', ARGV[3], 'updated_at', ARGV[3])
  redis.call('ZREM', P .. ':queued:' .. job[2], id)
  index(id, job[2], job[3], 'queued', 'cancelled')
end
return redis.call('HGETALL', key)
"""

# ARGV: P, now, batch size. Returns {ids looked at, jobs expired}.
_EXPIRE = """
local ids = redis.call('ZRANGEBYSCORE', P .. ':expiring', '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local expired = 0
for _, id in ipairs(ids) do
  local key = job_key(id)
  redis.call('ZREM', P .. ':expiring', id)
  local job = redis.call('HMGET', key, 'status', 'model', 'created_at')
  if job[1] == 'succeeded' or job[1] == 'failed' then
    redis.call('HSET', key, 'status', 'expired', 'request', '', 'updated_at', ARGV[2])
    redis.call('HDEL', key, 'result')
    index(id, job[2], job[3], job[1], 'expired')
    expired = expired + 1
  end
end
return {#ids, expired}
"""

# ARGV: P, status, ... Returns {count per status, in order; earliest queued available_at or ''}.
_STATS = """
local counts = {}
for i = 2, #ARGV do counts[#counts + 1] = redis.call('ZCARD', P .. ':by-status:' .. ARGV[i]) end
local models = {}
for _, m in ipairs(redis.call('SMEMBERS', P .. ':models')) do
  local queued = redis.call('ZCARD', P .. ':queued:' .. m)
  local running = redis.call('ZCARD', P .. ':running:' .. m)
  if queued > 0 or running > 0 then
    local q = redis.call('ZRANGE', P .. ':queued:' .. m, 0, 0, 'WITHSCORES')
    models[#models + 1] = {m, queued, running, q[2] or ''}
  end
end
return {counts, models}
"""

# ARGV: P, now, held until, limit. Returns the HGETALL of each pending callback taken.
_CLAIM_CALLBACKS = """
local ids = redis.call('ZRANGEBYSCORE', P .. ':callbacks', '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, id in ipairs(ids) do
  local key = job_key(id)
  if redis.call('HGET', key, 'callback_status') == 'pending' then
    redis.call('HSET', key, 'callback_at', ARGV[3])
    redis.call('ZADD', P .. ':callbacks', ARGV[3], id)
    out[#out + 1] = redis.call('HGETALL', key)
  else
    redis.call('ZREM', P .. ':callbacks', id)  -- a stale entry
  end
end
return out
"""

# ARGV: P, id, status, attempts, error or '', now. Returns 1 if the callback was pending.
_RECORD_CALLBACK = """
local id = ARGV[2]
local key = job_key(id)
if redis.call('HGET', key, 'callback_status') ~= 'pending' then return 0 end
redis.call('HSET', key, 'callback_status', ARGV[3], 'callback_at', ARGV[6], 'updated_at', ARGV[6])
redis.call('HINCRBY', key, 'callback_attempts', tonumber(ARGV[4]))
if ARGV[5] ~= '' then redis.call('HSET', key, 'callback_error', ARGV[5])
else redis.call('HDEL', key, 'callback_error') end
if ARGV[3] == 'pending' then redis.call('ZADD', P .. ':callbacks', ARGV[6], id)
else redis.call('ZREM', P .. ':callbacks', id) end
return 1
"""

_EXPIRE_BATCH = 500


def _num(value: float) -> str:
    """A float as a string that parses back to exactly the same float (Lua's tostring would round)."""
    return repr(float(value))


def _escape(model: str) -> str:
    """A model name with no ':' so that it can sit in the middle of a key unambiguously."""
    return model.replace("%", "%25").replace(":", "%3A")


def _encode(record: JobRecord) -> list[str | bytes]:
    """HSET arguments (field, value, ...); None fields are left out."""
    out: list[str | bytes] = []
    for name in RECORD_FIELDS:
        value = getattr(record, name)
        if value is None:
            continue
        if isinstance(value, StrEnum):
            value = value.value
        elif name in _FLOATS:
            value = _num(value)
        elif name in _INTS:
            value = str(int(value))
        out += [name, value]
    return out


def _decode(raw: Mapping[bytes, bytes] | Sequence[bytes], names: Sequence[str] = RECORD_FIELDS
            ) -> JobRecord | None:
    """A JobRecord from HGETALL (a dict from redis-py, a flat list from a script); None if empty."""
    if not raw:
        return None
    fields = dict(raw) if isinstance(raw, Mapping) else dict(zip(raw[::2], raw[1::2], strict=True))
    values: dict[str, Any] = {}
    for name in names:
        value = fields.get(name.encode())
        if value is None:
            continue
        if name in _BYTES:
            values[name] = bytes(value)
        elif name in _FLOATS:
            values[name] = float(value)
        elif name in _INTS:
            values[name] = int(value)
        elif name == "status":
            values[name] = JobStatus(value.decode())
        elif name == "callback_status":
            values[name] = CallbackStatus(value.decode())
        else:
            values[name] = value.decode()
    return JobRecord(**values)


class RedisJobStore:
    """A :class:`~inferlane.store.jobs.base.JobStore` in Redis (``redis://host:port/db``, ``rediss://`` for TLS)."""

    def __init__(self, url: str, *, prefix: str = "inferlane") -> None:
        try:
            import redis
        except ImportError:
            raise ConfigError(INSTALL_REDIS) from None
        self._refused: tuple[type[BaseException], ...] = (redis.AuthenticationError,
                                                          redis.exceptions.AuthenticationWrongNumberOfArgsError)
        self._errors: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError)
        self._replies: type[BaseException] = redis.ResponseError
        self._read_only: type[BaseException] = redis.ReadOnlyError
        target = redis_url(url, "jobs store", name="forbidden")
        unknown = sorted(set(target.params) - {"prefix"})
        if unknown:
            raise ConfigError(f"jobs store {redact(url)}: unknown parameter(s) {unknown}; the one parameter is "
                              "?prefix=")
        # NOTE: the client's timeouts make a hung server fail a call (503) instead of hanging a lane thread.
        self._redis: redis.Redis = target.client()
        self._prefix = target.params.get("prefix") or prefix
        self._submit = self._redis.register_script(_PRELUDE + _SUBMIT)
        self._claim = self._redis.register_script(_PRELUDE + _CLAIM)
        self._extend = self._redis.register_script(_PRELUDE + _EXTEND)
        self._complete = self._redis.register_script(_PRELUDE + _COMPLETE)
        self._fail = self._redis.register_script(_PRELUDE + _FAIL)
        self._cancel = self._redis.register_script(_PRELUDE + _CANCEL)
        self._expire = self._redis.register_script(_PRELUDE + _EXPIRE)
        self._stats = self._redis.register_script(_PRELUDE + _STATS)
        self._claim_callbacks = self._redis.register_script(_PRELUDE + _CLAIM_CALLBACKS)
        self._record_callback = self._redis.register_script(_PRELUDE + _RECORD_CALLBACK)

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        """A Redis that cannot be reached is a 503 for the caller, not a crash; one that refuses the
        credentials of the store URL is a configuration error (no retry changes it)."""
        try:
            yield
        except self._refused as e:
            raise ConfigError(f"the Redis job store refused the user or password of its URL (INFERLANE_JOBS_STORE or "
                              f"--store): {e}") from e
        except self._errors as e:
            raise Unavailable(f"the Redis job store is unreachable: {e}") from e
        except self._replies as e:  # READONLY after a failover, a full disk or memory, ...
            if not isinstance(e, self._read_only) and not any(word in str(e) for word in _UNAVAILABLE_REPLIES):
                raise
            raise Unavailable(f"the Redis job store cannot take writes now: {e}") from e

    def _key(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    def submit(self, record: JobRecord) -> tuple[JobRecord, bool]:
        if record.status is not JobStatus.QUEUED:
            raise ValueError(f"submit takes a queued job, got status {record.status.value!r}")
        idem = ""
        if record.idempotency_key is not None:
            idem = (self._key("idem", _escape(record.model), record.idempotency_key) if not record.tenant else
                    self._key("idem-t", _escape(record.tenant), _escape(record.model), record.idempotency_key))
        tenant_index = self._key("tenant", record.tenant)
        with self._reachable():
            created, stored = self._submit(args=[self._prefix, record.id, record.model, idem,
                                                 _num(record.created_at), _num(record.available_at), tenant_index,
                                                 *_encode(record)])
        job = _decode(stored)
        assert job is not None  # the script returns the job it stored or found
        return job, bool(created)

    def get(self, job_id: str) -> JobRecord | None:
        with self._reachable():
            raw = cast("dict[bytes, bytes]", self._redis.hgetall(self._key("job", job_id)))
        return _decode(raw)

    def _summaries(self, ids: Sequence[bytes]) -> builtins.list[JobRecord]:
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self._key("job", job_id.decode()), _SUMMARY_ARGS)
        rows = cast("list[list[bytes | None]]", pipe.execute())
        raws = [{k: v for k, v in zip(_SUMMARY_ARGS, row, strict=True) if v is not None} for row in rows]
        return [job for raw in raws if (job := _decode(raw, SUMMARY_FIELDS)) is not None]

    def list(self, status: JobStatus | None = None, limit: int = 100, model: str | None = None,
             tenant: str | None = None) -> builtins.list[JobRecord]:
        if limit <= 0:
            return []
        if tenant is not None:  # one index per tenant; status and model are filtered page by page
            found: builtins.list[JobRecord] = []
            start = 0
            with self._reachable():
                while len(found) < limit:
                    ids = cast("list[bytes]", self._redis.zrevrange(self._key("tenant", tenant), start,
                                                                    start + _LIST_PAGE - 1))
                    found += [j for j in self._summaries(ids) if j.tenant == tenant
                              and (status is None or j.status is status) and (model is None or j.model == model)]
                    if len(ids) < _LIST_PAGE:
                        break
                    start += _LIST_PAGE
            return found[:limit]
        if status is not None and model is not None:
            index = self._key("by-model-status", status.value, model)
        elif status is not None:
            index = self._key("by-status", status.value)
        elif model is not None:
            index = self._key("by-model", model)
        else:
            index = self._key("created")
        with self._reachable():
            ids = cast("list[bytes]", self._redis.zrevrange(index, 0, limit - 1))
            jobs = self._summaries(ids)
        # NOTE: a job may change status between reading the index and reading the job.
        return [job for job in jobs if status is None or job.status is status]

    def cancel(self, job_id: str, now: float | None = None) -> JobRecord | None:
        now = time.time() if now is None else now
        with self._reachable():
            raw = self._cancel(args=[self._prefix, job_id, _num(now)])
        return None if raw is None else _decode(raw)

    def claim(self, worker: str, lease_s: float, now: float, models: set[str] | None = None, *,
              ttl_s: float = DEFAULT_TTL_S) -> JobRecord | None:
        if models is not None and not models:
            return None
        scope = ["*"] if models is None else ["+", *sorted(models)]
        with self._reachable():
            raw = self._claim(args=[self._prefix, worker, _num(now), _num(now + lease_s), _num(now + ttl_s), *scope])
        return None if raw is None else _decode(raw)

    def extend(self, job_id: str, worker: str, lease_s: float, now: float) -> bool:
        with self._reachable():
            return bool(self._extend(args=[self._prefix, job_id, worker, _num(now + lease_s), _num(now)]))

    def complete(self, job_id: str, worker: str, result: bytes | None, output_uri: str | None, now: float,
                 ttl_s: float) -> bool:
        args = [self._prefix, job_id, worker, _num(now), _num(now + ttl_s),
                "0" if result is None else "1", result or b"",
                "0" if output_uri is None else "1", output_uri or ""]
        with self._reachable():
            return bool(self._complete(args=args))

    def fail(self, job_id: str, worker: str, error: str, now: float, retry_at: float | None, ttl_s: float) -> bool:
        args = [self._prefix, job_id, worker, error, _num(now), "" if retry_at is None else _num(retry_at),
                _num(now + ttl_s)]
        with self._reachable():
            return bool(self._fail(args=args))

    def claim_callbacks(self, now: float, hold_s: float, limit: int) -> builtins.list[JobRecord]:
        if limit <= 0:
            return []
        with self._reachable():
            raws = self._claim_callbacks(args=[self._prefix, _num(now), _num(now + hold_s), limit])
        return [job for raw in raws if (job := _decode(raw)) is not None]

    def record_callback(self, job_id: str, status: CallbackStatus, attempts: int, error: str | None,
                        now: float) -> bool:
        with self._reachable():
            return bool(self._record_callback(args=[self._prefix, job_id, status.value, attempts, error or "",
                                                    _num(now)]))

    def expire(self, now: float) -> int:
        total = 0
        with self._reachable():
            while True:  # in batches, so one script never blocks Redis for long
                seen, expired = self._expire(args=[self._prefix, _num(now), _EXPIRE_BATCH])
                total += int(expired)
                if int(seen) < _EXPIRE_BATCH:
                    return total

    def stats(self, now: float) -> JobStats:
        statuses = list(JobStatus)
        with self._reachable():
            counts, models = self._stats(args=[self._prefix, *(s.value for s in statuses)])
        by_status = {s: int(n) for s, n in zip(statuses, counts, strict=True)}
        by_model = {(m.decode() if isinstance(m, bytes) else str(m)): ModelBacklog(
            int(q), int(r), max(0.0, now - float(o)) if o else 0.0) for m, q, r, o in models}
        age = max((b.oldest_queued_age_s for b in by_model.values()), default=0.0)
        return JobStats(backlog=by_status[JobStatus.QUEUED], running=by_status[JobStatus.RUNNING],
                        oldest_queued_age_s=age, by_status=by_status, by_model=by_model)

    def close(self) -> None:
        self._redis.close()
