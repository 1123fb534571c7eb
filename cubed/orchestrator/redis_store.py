"""The Redis store (``CUBEJS_CACHE_AND_QUEUE_DRIVER=redis``): queues and cache shared by every
cubed process pointed at one Redis.

It behaves as :class:`cubed.orchestrator.memory.MemoryStore` does, for many processes at once.

Key layout (``P`` is the optional global prefix, ``Q`` a queue name, which already carries the
orchestrator id and data source, e.g. ``SQL_QUERY_STANDALONE_default``):

- ``P Q:queue``      sorted set of waiting keys, score ``QueuedQuery.score()`` (priority, then
  first come; lowest runs first)
- ``P Q:active``     sorted set of running keys, score = start time
- ``P Q:heartbeat``  sorted set of running keys, score = last heartbeat
- ``P Q:recent``     sorted set of waiting and running keys, score = orphan deadline
- ``P Q:queries``    hash key -> ``QueuedQuery`` JSON (the definition any process can run)
- ``P Q:owner``      hash key -> owner id of the process running it
- ``P Q:result:<key>`` string: the finished result (JSON), expiring after ``keep_for``
- ``P <cache key>``  string: a cache entry, expiring after its ttl
- channel ``P cubed:completed:<db>`` carries ``[queue, key]`` (JSON) whenever a query
  completes, so that every process wakes its own waiters (pub/sub channels are global to a
  Redis server, hence the database number in the name). A message published while a
  process's subscriber is reconnecting is lost; QueryQueue's reconcile tick reads the results
  of its waiters for that case.

Every change touching several keys is one Lua script (EVALSHA, then EVAL when Redis answers
NOSCRIPT, e.g. after a restart), so it is atomic across processes. Every command carries a
timeout: while Redis is down, txredisapi queues commands until it reconnects, so without one
a request would hang; with it the command fails with :class:`RedisUnavailable` (a 503) after
``command_timeout`` seconds. The connection pool and the completion subscriber reconnect by
themselves (back-off capped at ``reconnect_max_delay``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

import txredisapi
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail, gatherResults, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from cubed.errors import ConfigError, ServiceUnavailable
from cubed.orchestrator.stores import PRIORITY_MAX, Expired, QueuedQuery, Stage

DEFAULT_PORT = 6379
COMPLETED_CHANNEL = "cubed:completed"


class RedisUnavailable(ServiceUnavailable):
    """Redis did not answer in time or the connection was lost (HTTP 503)."""


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is and how to log in, parsed from ``CUBEJS_REDIS_URL``."""

    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    password: str | None = None
    username: str | None = None
    tls: bool = False

    def describe(self) -> str:
        """Return ``host:port/db`` (never the password), for logs."""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """Return the RedisAddress of ``redis://[[user]:password@]host[:port][/db]`` (or
    ``rediss://`` for TLS); raise ConfigError naming CUBEJS_REDIS_URL for anything else."""
    form = "redis://[:password@]host:port/db"
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as error:
        raise ConfigError(f"CUBEJS_REDIS_URL: {error} (expected {form})") from None
    if parts.scheme not in ("redis", "rediss"):
        shown = parts.scheme or "no scheme"
        raise ConfigError(f"CUBEJS_REDIS_URL: unsupported scheme '{shown}' (expected {form}, or rediss:// for TLS)")
    if not parts.hostname:
        raise ConfigError(f"CUBEJS_REDIS_URL: no host (expected {form})")
    db_text = parts.path.lstrip("/")
    query = parse_qs(parts.query)
    unknown = sorted(set(query) - {"db"})
    if unknown:
        raise ConfigError(f"CUBEJS_REDIS_URL: unsupported option {', '.join(unknown)} (expected {form})")
    if "db" in query and not db_text:
        db_text = query["db"][-1]
    try:
        db = int(db_text) if db_text else 0
    except ValueError:
        raise ConfigError(f"CUBEJS_REDIS_URL: the database must be a number, not '{db_text}' (expected {form})") \
            from None
    if db < 0:
        raise ConfigError(f"CUBEJS_REDIS_URL: the database must be a number >= 0 (expected {form})")
    return RedisAddress(
        host=parts.hostname,
        port=port or DEFAULT_PORT,
        db=db,
        password=unquote(parts.password) if parts.password else None,
        username=unquote(parts.username) if parts.username else None,
        tls=parts.scheme == "rediss",
    )


def _endpoint(address: RedisAddress, reactor: Any, connect_timeout: float) -> Any:
    """Return a client endpoint for ``address`` (TLS verified against the system's trust
    roots for rediss; the endpoint hands back the Redis protocol itself, not the TLS wrapper,
    as txredisapi's pool expects); ConfigError when TLS support (pyOpenSSL,
    service_identity) is missing."""
    endpoint = HostnameEndpoint(reactor, address.host, address.port, timeout=connect_timeout)
    if not address.tls:
        return endpoint
    try:
        from twisted.internet.endpoints import wrapClientTLS
        from twisted.internet.ssl import optionsForClientTLS

        options = optionsForClientTLS(address.host)
    except (ImportError, NotImplementedError) as error:
        raise ConfigError(f"CUBEJS_REDIS_URL: rediss:// needs Twisted's TLS support "
                          f"(pip install 'twisted[tls]'): {error}") from None
    return wrapClientTLS(options, endpoint)


# -- Lua scripts ------------------------------------------------------------------------------
# Queue scripts take the queue's keys in this order (only the first ones they need):
# 1 queue, 2 active, 3 heartbeat, 4 recent, 5 queries, 6 owner, 7 result:<key>.
# Scores and times travel as the decimal strings Python wrote (repr of a float), so they are
# stored exactly; Lua converts them to numbers only to compare them.

_FORGET = """
local function forget(key)
  redis.call('ZREM', KEYS[1], key)
  redis.call('ZREM', KEYS[2], key)
  redis.call('ZREM', KEYS[3], key)
  redis.call('ZREM', KEYS[4], key)
  redis.call('HDEL', KEYS[5], key)
  redis.call('HDEL', KEYS[6], key)
end
"""

_BUMP = """
local function bump(key, deadline)
  local current = redis.call('ZSCORE', KEYS[4], key)
  if not current then
    if tonumber(deadline) > 0 then current = deadline else current = '0' end
    redis.call('ZADD', KEYS[4], current, key)
  elseif tonumber(deadline) > tonumber(current) then
    redis.call('ZADD', KEYS[4], deadline, key)
  end
end
"""

# ARGV: key, score, orphan deadline, definition JSON. Returns 1 when newly queued.
# A key whose result is still kept is not queued again: QueryQueue reads the result before it
# adds, and with a store one round trip away the query may complete (here or in another
# process) in between; queueing it then would run it a second time.
_ADD = _BUMP + """
local key = ARGV[1]
if redis.call('EXISTS', KEYS[7]) == 1 then return 0 end
local known = redis.call('ZSCORE', KEYS[1], key) or redis.call('ZSCORE', KEYS[2], key)
bump(key, ARGV[3])
if known then return 0 end
redis.call('HSET', KEYS[5], key, ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[2], key)
return 1
"""

# ARGV: key, orphan deadline. Moves the deadline of a waiting or running key only.
_TOUCH = _BUMP + """
local key = ARGV[1]
if redis.call('ZSCORE', KEYS[1], key) or redis.call('ZSCORE', KEYS[2], key) then
  bump(key, ARGV[2])
end
return 0
"""

# ARGV: key, owner, concurrency, now. Returns the definition JSON when acquired.
_ACQUIRE = """
local key = ARGV[1]
if not redis.call('ZSCORE', KEYS[1], key) then return false end
if redis.call('ZSCORE', KEYS[2], key) then return false end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return false end
local definition = redis.call('HGET', KEYS[5], key)
if not definition then return false end
redis.call('ZREM', KEYS[1], key)
redis.call('ZADD', KEYS[2], ARGV[4], key)
redis.call('HSET', KEYS[6], key, ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], key)
return definition
"""

# ARGV: key, owner, now. Returns 1 when the owner still holds the key.
_HEARTBEAT = """
local key = ARGV[1]
if redis.call('HGET', KEYS[6], key) ~= ARGV[2] then return 0 end
if not redis.call('ZSCORE', KEYS[2], key) then return 0 end
redis.call('ZADD', KEYS[3], ARGV[3], key)
return 1
"""

# ARGV: key, owner, result, keep for (ms), channel, message. Returns 1 when completed.
_COMPLETE = _FORGET + """
local key = ARGV[1]
if redis.call('HGET', KEYS[6], key) ~= ARGV[2] then return 0 end
if not redis.call('ZSCORE', KEYS[2], key) then return 0 end
if tonumber(ARGV[4]) > 0 then
  redis.call('SET', KEYS[7], ARGV[3], 'PX', ARGV[4])
else
  redis.call('DEL', KEYS[7])
end
forget(key)
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""

# ARGV: now, stalled before. Returns {orphaned keys, stalled keys}; changes nothing.
_EXPIRED = """
local orphaned = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[1])
local stalled = {}
for _, key in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[2])) do
  if redis.call('ZSCORE', KEYS[2], key) then table.insert(stalled, key) end
end
return {orphaned, stalled}
"""

# ARGV: key. Returns the owner when it was running.
_REMOVE = _FORGET + """
local key = ARGV[1]
local owner = redis.call('HGET', KEYS[6], key)
forget(key)
return owner
"""

# ARGV: key, check owner ('1'|'0'), owner, PRIORITY_MAX. Returns 1 when put back to waiting.
# The score is QueuedQuery.score() computed from the stored definition with the same double
# arithmetic as Python's.
_RELEASE = """
local key = ARGV[1]
local holder = redis.call('HGET', KEYS[6], key)
if not holder then return 0 end
if not redis.call('ZSCORE', KEYS[2], key) then return 0 end
if ARGV[2] == '1' and holder ~= ARGV[3] then return 0 end
local definition = redis.call('HGET', KEYS[5], key)
if not definition then return 0 end
local item = cjson.decode(definition)
local score = (tonumber(ARGV[4]) - (tonumber(item['priority']) or 0)) * 1e10 + (tonumber(item['added_at']) or 0)
redis.call('ZREM', KEYS[2], key)
redis.call('HDEL', KEYS[6], key)
redis.call('ZREM', KEYS[3], key)
redis.call('ZADD', KEYS[1], score, key)
return 1
"""

# ARGV: key. Returns {'active', started_at} | {'waiting', position} | nil.
_STAGE = """
local key = ARGV[1]
local started = redis.call('ZSCORE', KEYS[2], key)
if started then return {'active', started} end
local score = redis.call('ZSCORE', KEYS[1], key)
if not score then return false end
return {'waiting', redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. score) + 1}
"""

# Returns {waiting, running}.
_SIZES = """
return {redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2])}
"""


@dataclass(frozen=True)
class _Script:
    """A Lua script and its SHA1 (for EVALSHA)."""

    name: str
    source: str

    @property
    def sha(self) -> str:
        """Return the SHA1 hex digest Redis knows the script by."""
        return hashlib.sha1(self.source.encode()).hexdigest()


_SCRIPTS = {
    name: _Script(name, source)
    for name, source in {
        "add": _ADD, "touch": _TOUCH, "acquire": _ACQUIRE, "heartbeat": _HEARTBEAT, "complete": _COMPLETE,
        "expired": _EXPIRED, "remove": _REMOVE, "release": _RELEASE, "stage": _STAGE, "sizes": _SIZES,
    }.items()
}


def _number(value: float) -> str:
    """Return the exact decimal text of a number for Redis (txredisapi would round floats)."""
    return repr(float(value))


# -- completion subscriber --------------------------------------------------------------------
class _SubscriberProtocol(txredisapi.SubscriberProtocol):
    """A pub/sub connection: hands messages to its factory and tells when it is lost."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lost: Deferred[None] = Deferred()

    def messageReceived(self, pattern: Any, channel: str, message: str) -> None:
        self.factory.on_message(channel, message)

    def connectionLost(self, why: Any) -> None:
        try:
            super().connectionLost(why)
        finally:
            if not self.lost.called:
                self.lost.callback(None)


class _SubscriberFactory(Factory):
    """Builds pub/sub connections (with the password of the URL)."""

    noisy = False
    isLazy = True  # read by txredisapi when logging in fails
    log = Logger()

    def __init__(self, address: RedisAddress, on_message: Callable[[str, str], None]) -> None:
        self.address = address
        self.on_message = on_message

    def buildProtocol(self, addr: Any) -> _SubscriberProtocol:
        protocol = _SubscriberProtocol(charset="utf-8", password=self.address.password,
                                       username=self.address.username, convertNumbers=False)
        protocol.factory = self
        return protocol

    def stopTrying(self) -> None:
        """Called by txredisapi when logging in fails; the subscriber retries anyway."""

    def connectionError(self, why: str) -> None:
        """Called by txredisapi when logging in fails: log it."""
        self.log.warn("Redis subscriber: {why}", why=why)


class _CompletionSubscriber:
    """One pub/sub connection to the completion channel, reconnected (with back-off) whenever
    it fails or is lost, until stopped."""

    log = Logger()

    def __init__(self, address: RedisAddress, channel: str, reactor: Any, timeout: float, max_delay: float,
                 on_message: Callable[[str, str], None]) -> None:
        self.address = address
        self.channel = channel
        self.reactor = reactor
        self.timeout = timeout
        self.max_delay = max_delay
        self.factory = _SubscriberFactory(address, on_message)
        self.endpoint = _endpoint(address, reactor, timeout)
        self.protocol: _SubscriberProtocol | None = None
        self.subscribed = False
        self._stopping = False
        self._task: Deferred[None] | None = None
        self._finished: Deferred[None] = Deferred()
        self._ready: list[Deferred[None]] = []

    def start(self) -> None:
        """Start connecting in the background (once)."""
        if self._task is None and not self._stopping:
            self._task = ensureDeferred(self._run())
            self._task.addErrback(lambda f: None if f.check(CancelledError) else self.log.failure(
                "Redis subscriber stopped", f))
            self._task.addBoth(lambda _: self._finished.callback(None))

    def when_subscribed(self) -> Deferred[None]:
        """Return a Deferred firing once subscribed; it fails with RedisUnavailable after the
        timeout (connecting goes on in the background)."""
        if self.subscribed:
            return succeed(None)
        ready: Deferred[None] = Deferred()
        self._ready.append(ready)

        def timed_out(result: Any, timeout: float) -> Failure:
            return Failure(RedisUnavailable(
                f"cache and queue store unavailable: Redis did not accept the completion subscription within "
                f"{timeout:g} s (still retrying)"))

        ready.addTimeout(self.timeout, self.reactor, onTimeoutCancel=timed_out)
        return ready

    def _timed(self, d: Deferred[Any]) -> Deferred[Any]:
        return d.addTimeout(self.timeout, self.reactor)

    async def _run(self) -> None:
        failures = 0
        connected_before = False
        while not self._stopping:
            protocol: _SubscriberProtocol | None = None
            try:
                protocol = await self._timed(self.endpoint.connect(self.factory))
                await self._timed(protocol.whenConnected())
                await self._timed(protocol.subscribe(self.channel))
            except Exception as error:
                if protocol is not None:
                    await self._drop(protocol)
                if self._stopping:
                    break
                failures += 1
                if failures == 1:
                    self.log.warn("Redis subscriber: cannot subscribe at {where}: {error}; retrying in the background",
                                  where=self.address.describe(), error=str(error) or type(error).__name__)
                await deferLater(self.reactor, min(self.max_delay, 0.25 * 2 ** min(failures, 10)), lambda: None)
                continue
            if failures or connected_before:
                self.log.info("Redis subscriber: subscribed again at {where}", where=self.address.describe())
            failures = 0
            connected_before = True
            self.protocol = protocol
            self.subscribed = True
            ready, self._ready = self._ready, []
            for waiter in ready:
                if not waiter.called:
                    waiter.callback(None)
            await protocol.lost
            self.protocol = None
            self.subscribed = False
            if not self._stopping:
                self.log.warn("Redis subscriber: connection to {where} lost; reconnecting",
                              where=self.address.describe())

    @staticmethod
    async def _drop(protocol: _SubscriberProtocol) -> None:
        if protocol.transport is not None and not protocol.lost.called:
            protocol.transport.abortConnection()
            await protocol.lost

    def stop(self) -> Deferred[None]:
        """Stop reconnecting and close the connection; fires when it is closed."""
        self._stopping = True
        for waiter in self._ready:
            if not waiter.called:
                waiter.cancel()
        self._ready = []
        if self._task is None:
            return succeed(None)
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.loseConnection()
        else:
            self._task.cancel()
        finished: Deferred[None] = Deferred()
        self._finished.addBoth(lambda _: finished.callback(None))
        return finished


# -- the store --------------------------------------------------------------------------------
class _PoolFactory(txredisapi.RedisFactory):
    """txredisapi's pool factory, made to keep reconnecting when a new connection fails to log
    in (AUTH) or select its database (SELECT).

    txredisapi stops reconnecting for good in that case, so a Redis that answers SELECT with
    LOADING after a restart, or drops the connection during the handshake, or a password that
    is fixed on the server later, would leave the pool dead until cubed restarts. Here the
    failure is logged and the slot retries with its usual back-off.
    """

    log = Logger()

    def stopTrying(self) -> Deferred[None]:
        """Called by txredisapi when AUTH or SELECT fails: keep trying (the connection is
        being closed and its slot reconnects)."""
        return succeed(None)

    def connectionError(self, why: str) -> None:
        """Called by txredisapi when AUTH or SELECT fails: log it (nobody waits on the lazy
        pool's ``deferred``, which would otherwise end as an unhandled error)."""
        self.log.warn("Redis: {why}; retrying", why=why)


class RedisStore:
    """QueueStore and CacheStore over one Redis, shared by many processes."""

    log = Logger()

    def __init__(self, address: RedisAddress, reactor: Any, *, command_timeout: float = 2.0, prefix: str = "",
                 pool_size: int = 3, reconnect_max_delay: float = 2.0) -> None:
        self.address = address
        self.reactor = reactor
        self.command_timeout = command_timeout
        self.prefix = prefix
        self.channel = f"{prefix}{COMPLETED_CHANNEL}:{address.db}"
        self._closed = False
        self._listeners: list[Callable[[str, str], None]] = []
        factory = _PoolFactory(
            f"{address.host}:{address.port}", address.db or None, pool_size, isLazy=True, charset="utf-8",
            password=address.password, username=address.username, convertNumbers=False,
            # A connection that stops answering is dropped (and reconnected) after this long.
            replyTimeout=command_timeout)
        factory.reconnect = True
        factory.initialDelay = min(0.5, reconnect_max_delay)
        factory.maxDelay = reconnect_max_delay
        factory.startConnecting(_endpoint(address, reactor, command_timeout))
        self._factory = factory
        self._pool = factory.handler
        self._subscriber = _CompletionSubscriber(address, self.channel, reactor, command_timeout,
                                                 reconnect_max_delay, self._message)

    @classmethod
    def from_url(cls, url: str, reactor: Any, *, command_timeout: float = 2.0, prefix: str = "",
                 pool_size: int = 3, reconnect_max_delay: float = 2.0) -> "RedisStore":
        """Return a store for ``CUBEJS_REDIS_URL`` (connecting lazily, in the background);
        ConfigError when the URL is not ``redis[s]://[[user]:password@]host[:port][/db]``."""
        return cls(parse_redis_url(url), reactor, command_timeout=command_timeout, prefix=prefix,
                   pool_size=pool_size, reconnect_max_delay=reconnect_max_delay)

    # -- plumbing ------------------------------------------------------------------------
    def _keys(self, queue: str, key: str | None = None) -> list[str]:
        base = f"{self.prefix}{queue}"
        keys = [f"{base}:queue", f"{base}:active", f"{base}:heartbeat", f"{base}:recent", f"{base}:queries",
                f"{base}:owner"]
        if key is not None:
            keys.append(f"{base}:result:{key}")
        return keys

    def _command(self, name: str, call: Callable[[], Deferred[Any]]) -> Deferred[Any]:
        """Return the Deferred of one Redis command, failing with RedisUnavailable when Redis
        does not answer within ``command_timeout`` or the connection is lost."""
        if self._closed:
            return fail(RedisUnavailable("cache and queue store unavailable: the Redis store is closed"))
        try:
            d = call()
        except Exception:
            return fail()

        def timed_out(result: Any, timeout: float) -> Failure:
            return Failure(RedisUnavailable(
                f"cache and queue store unavailable: Redis did not answer {name} within {timeout:g} s"))

        def unavailable(failure: Failure) -> Failure:
            if failure.check(txredisapi.ConnectionError):
                return Failure(RedisUnavailable(
                    f"cache and queue store unavailable: Redis {name} failed: {failure.getErrorMessage()}"))
            return failure

        d.addTimeout(self.command_timeout, self.reactor, onTimeoutCancel=timed_out)
        d.addErrback(unavailable)
        return d

    def _script(self, name: str, keys: Sequence[str], args: Sequence[str]) -> Deferred[Any]:
        """Run a Lua script by EVALSHA, and by EVAL when Redis does not know it (NOSCRIPT)."""
        script = _SCRIPTS[name]

        def call() -> Deferred[Any]:
            d = self._pool.evalsha(script.sha, list(keys), list(args))

            def unknown(failure: Failure) -> Deferred[Any]:
                failure.trap(txredisapi.ScriptDoesNotExist)
                return self._pool.eval(script.source, list(keys), list(args))

            return d.addErrback(unknown)

        return self._command(name, call)

    # -- QueueStore ----------------------------------------------------------------------
    def add(self, queue: str, item: QueuedQuery, orphan_deadline: float) -> Deferred[bool]:
        """Queue ``item`` unless waiting or running (its orphan deadline moves to the later one
        either way) or its result is still kept (then nothing changes: the caller reads the
        result); fire True when newly added."""
        d = self._script("add", self._keys(queue, item.key),
                         [item.key, _number(item.score()), _number(orphan_deadline), item.encode()])
        return d.addCallback(lambda added: bool(added))

    def touch(self, queue: str, key: str, orphan_deadline: float) -> Deferred[None]:
        """Move the orphan deadline of a waiting or running ``key`` (to the later one); fire None."""
        d = self._script("touch", self._keys(queue), [key, _number(orphan_deadline)])
        return d.addCallback(lambda _: None)

    def result(self, queue: str, key: str) -> Deferred[str | None]:
        """Fire with the kept result JSON of ``key``, or None."""
        result_key = self._keys(queue, key)[-1]
        return self._command("result", lambda: self._pool.get(result_key))

    def stage(self, queue: str, key: str) -> Deferred[Stage | None]:
        """Fire with Stage(active, started_at) or Stage(waiting, position), or None when
        ``key`` is neither waiting nor running."""

        def decoded(reply: Any) -> Stage | None:
            if not reply:
                return None
            if reply[0] == "active":
                return Stage(active=True, started_at=float(reply[1]))
            return Stage(active=False, position=int(reply[1]))

        return self._script("stage", self._keys(queue), [key]).addCallback(decoded)

    def waiting(self, queue: str, limit: int) -> Deferred[list[str]]:
        """Fire with up to ``limit`` waiting keys, first to run first."""
        if limit <= 0:
            return succeed([])
        queue_key = self._keys(queue)[0]
        d = self._command("waiting", lambda: self._pool.zrange(queue_key, 0, limit - 1))
        return d.addCallback(lambda keys: list(keys or []))

    def acquire(self, queue: str, key: str, owner: str, concurrency: int, now: float) -> Deferred[QueuedQuery | None]:
        """Make a waiting ``key`` active for ``owner`` when fewer than ``concurrency`` run;
        fire with its QueuedQuery, else None."""
        d = self._script("acquire", self._keys(queue), [key, owner, str(int(concurrency)), _number(now)])
        return d.addCallback(lambda definition: QueuedQuery.decode(definition) if definition else None)

    def heartbeat(self, queue: str, key: str, owner: str, now: float) -> Deferred[bool]:
        """Record a heartbeat of ``owner`` for ``key``; fire False when it no longer owns it."""
        d = self._script("heartbeat", self._keys(queue), [key, owner, _number(now)])
        return d.addCallback(lambda beat: bool(beat))

    def complete(self, queue: str, key: str, owner: str, result: str, keep_for: float) -> Deferred[bool]:
        """If ``owner`` still runs ``key``: keep ``result`` for ``keep_for`` seconds, remove
        the query from every structure and publish the completion; fire whether it did."""
        keep_ms = int(round(keep_for * 1000)) if keep_for > 0 else 0
        if keep_for > 0:
            keep_ms = max(1, keep_ms)
        message = json.dumps([queue, key], separators=(",", ":"))
        d = self._script("complete", self._keys(queue, key),
                         [key, owner, result, str(keep_ms), self.channel, message])
        return d.addCallback(lambda done: bool(done))

    def expired(self, queue: str, now: float, stalled_before: float) -> Deferred[Expired]:
        """Fire with the keys whose orphan deadline is <= ``now`` and the running keys whose
        last heartbeat is < ``stalled_before``; changes nothing."""
        d = self._script("expired", self._keys(queue), [_number(now), _number(stalled_before)])
        return d.addCallback(lambda reply: Expired(orphaned=list(reply[0] or []), stalled=list(reply[1] or [])))

    def remove(self, queue: str, key: str) -> Deferred[str | None]:
        """Remove ``key`` from every structure (its kept result stays); fire with its owner
        when it was running, else None."""
        return self._script("remove", self._keys(queue), [key]).addCallback(lambda owner: owner or None)

    def release(self, queue: str, key: str, owner: str | None) -> Deferred[bool]:
        """Put a running ``key`` back to waiting with its original score (with ``owner``: only
        if that owner holds it); fire whether it did."""
        d = self._script("release", self._keys(queue),
                         [key, "0" if owner is None else "1", owner or "", str(PRIORITY_MAX)])
        return d.addCallback(lambda released: bool(released))

    def sizes(self, queue: str) -> Deferred[tuple[int, int]]:
        """Fire with (waiting, running) counts."""
        d = self._script("sizes", self._keys(queue), [])
        return d.addCallback(lambda reply: (int(reply[0]), int(reply[1])))

    def subscribe(self, listener: Callable[[str, str], None]) -> Deferred[None]:
        """Call ``listener(queue, key)`` whenever any process completes a query. Fires once the
        subscription is in place; fails with RedisUnavailable after ``command_timeout`` when
        Redis is not reachable, while subscribing goes on in the background (the listener
        stays registered)."""
        if self._closed:
            return fail(RedisUnavailable("cache and queue store unavailable: the Redis store is closed"))
        self._listeners.append(listener)
        self._subscriber.start()
        return self._subscriber.when_subscribed()

    def _message(self, channel: str, message: str) -> None:
        if channel != self.channel:
            return
        try:
            queue, key = json.loads(message)
        except (TypeError, ValueError):
            self.log.warn("Redis subscriber: ignoring a malformed completion message {message!r}", message=message)
            return
        for listener in list(self._listeners):
            try:
                listener(queue, key)
            except Exception:
                self.log.failure("completion listener failed for {queue} {key}", queue=queue, key=key)

    def ping(self) -> Deferred[None]:
        """Fire None when Redis answers PING; fail with RedisUnavailable otherwise."""
        return self._command("PING", lambda: self._pool.ping()).addCallback(lambda _: None)

    # -- CacheStore ----------------------------------------------------------------------
    def get(self, key: str) -> Deferred[str | None]:
        """Fire with the cache entry of ``key``, or None."""
        return self._command("GET", lambda: self._pool.get(f"{self.prefix}{key}"))

    def set(self, key: str, value: str, ttl: float) -> Deferred[None]:
        """Keep ``value`` under ``key`` for ``ttl`` seconds (dropped at once when ttl <= 0);
        fire None."""
        full = f"{self.prefix}{key}"
        if ttl <= 0:
            return self._command("DEL", lambda: self._pool.delete(full)).addCallback(lambda _: None)
        ms = max(1, int(round(ttl * 1000)))
        return self._command("SET", lambda: self._pool.set(full, value, pexpire=ms)).addCallback(lambda _: None)

    def delete(self, key: str) -> Deferred[None]:
        """Drop the cache entry of ``key``; fire None."""
        return self._command("DEL", lambda: self._pool.delete(f"{self.prefix}{key}")).addCallback(lambda _: None)

    # -- lifecycle -----------------------------------------------------------------------
    def close(self) -> Deferred[None]:
        """Stop reconnecting and close the pool and the subscriber; fires None when every
        connection is closed. Commands after close fail with RedisUnavailable."""
        if self._closed:
            return succeed(None)
        self._closed = True
        done = gatherResults([self._factory.disconnect(), self._subscriber.stop()], consumeErrors=True)
        return done.addCallback(lambda _: None)
