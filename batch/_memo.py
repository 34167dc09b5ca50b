"""The host memo: answers already paid for, kept where every Python worker of the host can read them.

Spark evaluates a plan's UDF more than once in ordinary operation: a sort samples
its input in a job of its own before the real one (range partitioning), a failed or
killed task runs again, a speculative copy runs beside a slow one, and an action run
twice on one DataFrame evaluates it twice. Each of those runs lands in a Python worker
that knows nothing of the others, so without a memo each pays the endpoint again.

Entries live in one SQLite database (WAL mode, so readers never wait for a writer)
in the per-user folder of ``batch.shared``. A key is a SHA-256 of what is sent (the
endpoint entry's name and URL and the exact request body for one input) and of the
scope it was asked in (see ``MemoSettings``), so no prompt or secret is readable from
a file. Only successful answers are kept: a failed row is asked again. Everything
here fails open: if the folder or the database cannot be used, the endpoint is called
as if there were no memo.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from array import array
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from dataclasses import dataclass, field, replace
from typing import Any
from collections.abc import Callable, Mapping, Sequence

from .config import EndpointConfig
from ._engine import Memo, RowOutcome, answer_rows
from .errors import EndpointError
from ._flow.shared import private_dir
from ._wire import inputs_per_request, request_body

__all__ = ["MemoSettings", "HostMemo", "RememberingClient", "fingerprint", "settings_from_env", "host_memo",
           "answer_remembered", "body_digest", "value_digest", "FILE_NAME"]

log = logging.getLogger("batch._memo")

FILE_NAME = "memo.sqlite3"
PRUNE_EVERY = 512  # stores between two prunes in one process
#: Seconds a read or write waits for another process holding the database (its prune) before giving up:
#: the memo's own thread waits, not the requests.
BUSY_TIMEOUT = 2.0
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode


@dataclass(frozen=True)
class MemoSettings:
    """Captured on the driver when a column is built, so a notebook's ``os.environ`` change takes effect
    for the next column without restarting the workers (whose environment is fixed at JVM start).

    ``scope`` joins every key: a fresh one per built column by default, so the re-evaluations of one plan
    share answers while a new query asks afresh (a temperature above zero is meant to give new samples,
    and an endpoint name may point at a new model tomorrow). ``BATCH_MEMO_SCOPE=host`` shares answers
    between all queries of the user on the host, up to ``max_age_s``.
    """

    enabled: bool = True
    scope: str = field(default_factory=lambda: uuid.uuid4().hex)
    max_age_s: float = 6 * 3600.0
    max_entries: int = 200_000
    max_bytes: int = 256 * 1024 * 1024
    folder: str | None = None  # None: batch.shared's per-user folder

    @property
    def max_entry_bytes(self) -> int:
        """One answer may not take more than a small part of the memo, or it would push everything out."""
        return max(1, self.max_bytes // 64)


def settings_from_env(env: Mapping[str, str] | None = None) -> MemoSettings:
    env = os.environ if env is None else env
    enabled = env.get("BATCH_MEMO", "on").strip().lower() not in ("off", "0", "false", "no")
    settings = MemoSettings(enabled=enabled, folder=env.get("BATCH_MEMO_DIR") or None)
    if env.get("BATCH_MEMO_SCOPE", "").strip().lower() == "host":
        settings = replace(settings, scope="host")
    numbers: dict[str, tuple[str, Callable[[str], Any]]] = {
        "max_age_s": ("BATCH_MEMO_MAX_AGE_S", float), "max_entries": ("BATCH_MEMO_MAX_ENTRIES", int),
        "max_bytes": ("BATCH_MEMO_MAX_MB", lambda v: int(float(v) * 1024 * 1024))}
    for name, (variable, parse) in numbers.items():
        if env.get(variable):
            try:
                settings = replace(settings, **{name: parse(env[variable])})
            except ValueError:
                log.warning("ignoring %s=%r: not a number", variable, env[variable])
    return settings


def fingerprint(scope: str, config: EndpointConfig, value: Any, params: Mapping[str, Any] | None,
                response_format: Mapping[str, Any] | None) -> bytes:
    """What one input would be sent as, hashed: the same body asked of the same endpoint gets the same key."""
    return body_digest(request_body(config, [value], params, response_format), scope, config.name, config.url())


def body_digest(body: Any, *context: str) -> bytes:
    """SHA-256 of a request body (keys sorted, so equal bodies hash equal) and the context it is asked in.
    The job runner's per-row fingerprint is this too, with its own context."""
    text = "\x00".join((*context, _encode(body)))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


#: A text no request holds, put where a value goes to find that place in the body's canonical JSON.
_SLOT = "\x00\ufdd0value\ufdd0\x00"


def value_digest(config: EndpointConfig, params: Mapping[str, Any] | None, response_format: Mapping[str, Any] | None,
                 *context: str) -> Callable[[Any], bytes]:
    """``value -> body_digest(request_body(config, [value], params, response_format), *context)``, made once for
    the many rows of a batch.

    A text value is put in its body as it is, so its place in the body's canonical JSON is the same whatever the
    text: each text then costs only its own encoding and the hash, not building and encoding the whole body
    (5 of the 6.5 us a key took, of the 150 to 200 us a request costs the client). Other values take the whole way.
    """
    def whole(value: Any) -> bytes:
        return body_digest(request_body(config, [value], params, response_format), *context)

    slot = _encode(_SLOT)
    head, found, tail = "\x00".join((*context, _encode(request_body(config, [_SLOT], params, response_format)))
                                     ).partition(slot)
    if not found or slot in tail:
        return whole

    def digest(value: Any) -> bytes:
        if type(value) is not str:
            return whole(value)
        return hashlib.sha256((head + _encode(value) + tail).encode("utf-8", "surrogatepass")).digest()

    return digest


def _pack(value: Any) -> bytes | None:
    """Text as UTF-8 and vectors as raw float64 (an embedding a row: JSON would cost far more), else JSON."""
    if isinstance(value, str):
        return b"s" + value.encode("utf-8", "surrogatepass")
    if hasattr(value, "dtype") and getattr(value, "ndim", 0) == 1 and value.dtype.kind == "f":
        return b"f" + value.astype("<f8", copy=False).tobytes()
    if isinstance(value, list) and value and all(type(x) is float for x in value):
        return b"f" + array("d", value).tobytes()
    try:
        return b"j" + _encode(value).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError):
        return None  # not JSON (a type we do not know): simply not memoised


def _unpack(blob: bytes) -> Any:
    kind, data = blob[:1], blob[1:]
    if kind == b"s":
        return data.decode("utf-8", "surrogatepass")
    if kind == b"f":
        return array("d", data).tolist()
    return json.loads(data.decode("utf-8", "surrogatepass"))


_SCHEMA = ("CREATE TABLE IF NOT EXISTS memo (key BLOB PRIMARY KEY, stored REAL NOT NULL, size INTEGER NOT NULL, "
           "value BLOB NOT NULL) WITHOUT ROWID", "CREATE INDEX IF NOT EXISTS memo_stored ON memo (stored)")
# The memo's entries and bytes, kept by triggers as rows come and go, so that a prune within the bounds reads
# one row instead of counting a table of up to ``max_entries`` rows (milliseconds each time). A writer that
# does not turn on recursive triggers (an older version of this module) counts a replaced row twice: the
# count errs high, and a prune that finds it over a bound counts the table and sets it right.
_SIZE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS memo_size (id INTEGER PRIMARY KEY CHECK (id = 0), entries INTEGER NOT NULL, "
    "bytes INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO memo_size SELECT 0, COUNT(*), TOTAL(size) FROM memo",
    "CREATE TRIGGER IF NOT EXISTS memo_added AFTER INSERT ON memo BEGIN UPDATE memo_size SET "
    "entries = entries + 1, bytes = bytes + NEW.size WHERE id = 0; END",
    "CREATE TRIGGER IF NOT EXISTS memo_removed AFTER DELETE ON memo BEGIN UPDATE memo_size SET "
    "entries = entries - 1, bytes = bytes - OLD.size WHERE id = 0; END")
_SIZE_OBJECTS = ("memo_size", "memo_added", "memo_removed")
_LOOKUP_CHUNK = 500


class HostMemo:
    """One process's handle on the host's memo; a closed (failed) handle answers nothing and stores nothing.

    Every read and write of the database runs on one thread of the process (the memo's thread), in the
    order asked, with one connection: a prune, or a store waiting for another worker's prune behind
    SQLite's lock, takes a fraction of a second that would otherwise stop every request of the worker's
    event loop (and, by the learned rate they share, every worker's). A fork gets a new thread.
    """

    def __init__(self, settings: MemoSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings, self.clock = settings, clock
        self.path: Path | None = None
        self._local = threading.local()
        self._stores = 0
        self._pending: list[tuple[bytes, Any]] = []  # answers of this turn of the event loop, not yet handed over
        self._thread: ThreadPoolExecutor | None = None  # the memo's thread (see the class docstring)
        self._thread_pid = 0
        self.broken = not settings.enabled
        if not self.broken:
            try:
                folder = private_dir(settings.folder)
                self.path = folder / FILE_NAME
            except OSError as exc:
                self._give_up(exc)
                return
            self._submit(self._open)  # lookups and stores wait for it on the memo's thread, nobody else

    def _open(self) -> None:
        try:
            self._connection()
            self._prune()
        except (OSError, sqlite3.Error) as exc:
            self._give_up(exc)

    @property
    def usable(self) -> bool:
        return not self.broken

    def _give_up(self, exc: BaseException) -> None:
        if not self.broken:
            log.warning("answer memo off for this worker (%s): every request goes to the endpoint", exc)
        self.broken = True

    def _connection(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            if self.path is None:
                raise sqlite3.OperationalError("the memo has no folder")
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=True)
            os.chmod(self.path, 0o600)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=OFF")  # a memo lost with the machine is only asked again
            for statement in _SCHEMA:
                connection.execute(statement)
            connection.execute("PRAGMA recursive_triggers=ON")  # a replaced row leaves the count as it added
            marks = ",".join("?" * len(_SIZE_OBJECTS))
            made = connection.execute(f"SELECT COUNT(*) FROM sqlite_master WHERE name IN ({marks})",
                                      _SIZE_OBJECTS).fetchone()[0]
            if made != len(_SIZE_OBJECTS):  # made once per file, in one transaction with the first count
                with connection:
                    connection.execute("BEGIN IMMEDIATE")
                    for statement in _SIZE_SCHEMA:
                        connection.execute(statement)
            local.connection, local.pid = connection, os.getpid()
        return local.connection

    def lookup(self, keys: Sequence[bytes]) -> dict[bytes, Any]:
        """The answers stored for ``keys`` and young enough; a key without one is simply absent. Waits for
        the memo's thread: from an event loop, await ``lookup_soon`` instead."""
        return self.lookup_soon(keys).result()

    def lookup_soon(self, keys: Sequence[bytes]) -> Future[dict[bytes, Any]]:
        """``lookup`` on the memo's thread, after every store handed over before it."""
        return self._submit(self._lookup, keys, default={})

    def _submit(self, work: Callable[..., Any], *args: Any, default: Any = None) -> Future[Any]:
        """``work(*args)`` on the memo's thread; ``default`` at once when the memo is off or closed."""
        if self._pending:
            self._flush()
        thread = self._memo_thread()
        if thread is not None:
            try:
                return thread.submit(work, *args)
            except RuntimeError:  # the interpreter is shutting down: nothing more is read or kept
                pass
        done: Future[Any] = Future()
        done.set_result(default)
        return done

    def _memo_thread(self) -> ThreadPoolExecutor | None:
        """The memo's thread in this process: a fork has none of its parent's threads."""
        if self.broken or self.path is None:
            return None
        if self._thread is None or self._thread_pid != os.getpid():
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="batch-memo")
            self._thread_pid = os.getpid()
        return self._thread

    def _lookup(self, keys: Sequence[bytes]) -> dict[bytes, Any]:
        if self.broken or not keys:
            return {}
        found: dict[bytes, Any] = {}
        oldest = self.clock() - self.settings.max_age_s
        try:
            connection = self._connection()
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[start:start + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                for key, blob in connection.execute(
                        f"SELECT key, value FROM memo WHERE key IN ({marks}) AND stored >= ?", (*chunk, oldest)):
                    found[key] = _unpack(blob)
        except (sqlite3.Error, OSError, ValueError) as exc:
            self._give_up(exc)
            return {}
        return found

    def store(self, entries: Sequence[tuple[bytes, Any]]) -> None:
        """Keep ``entries`` (key, answer) and wait until they are kept (or turned away)."""
        self._submit(self._store, list(entries)).result()

    def _store(self, entries: Sequence[tuple[bytes, Any]]) -> None:
        if self.broken or not entries:
            return
        now = self.clock()
        rows = []
        for key, value in entries:
            blob = _pack(value)
            if blob is not None and len(blob) <= self.settings.max_entry_bytes:
                rows.append((key, now, len(blob), blob))
        if not rows:
            return
        try:
            connection = self._connection()
            with connection:  # one transaction for the lot
                connection.execute("BEGIN")
                connection.executemany("INSERT OR REPLACE INTO memo VALUES (?, ?, ?, ?)", rows)
            self._stores += len(rows)
            if self._stores >= PRUNE_EVERY:
                self._stores = 0
                self._prune()
        except sqlite3.OperationalError as exc:  # busy past the timeout: this answer is not kept, that is all
            log.debug("answer not memoised: %s", exc)
        except (sqlite3.Error, OSError) as exc:
            self._give_up(exc)

    def store_soon(self, entries: Sequence[tuple[bytes, Any]]) -> None:
        """``store`` without waiting: handed to the memo's thread at the end of this turn of the running event
        loop, in one transaction with every other answer that arrived in the same turn (a transaction costs
        more than the rows in it)."""
        if not entries:
            return
        first = not self._pending
        self._pending.extend(entries)
        if first:
            try:
                asyncio.get_running_loop().call_soon(self._flush)
            except RuntimeError:  # no loop: at once
                self._flush()

    def _flush(self) -> None:
        entries, self._pending = self._pending, []
        if entries:
            self._submit(self._store, entries).add_done_callback(_log_failure)

    def kept(self) -> Future[None]:
        """Done once everything handed over so far is stored (or turned away)."""
        return self._submit(_nothing)

    def prune(self) -> None:
        """Forget what is too old, then the oldest until both bounds hold with a tenth to spare."""
        self._submit(self._prune).result()

    def _prune(self) -> None:
        if self.broken:
            return
        s = self.settings
        try:
            connection = self._connection()
            with connection:
                connection.execute("BEGIN IMMEDIATE")
                connection.execute("DELETE FROM memo WHERE stored < ?", (self.clock() - s.max_age_s,))
                kept = connection.execute("SELECT entries, bytes FROM memo_size").fetchone()
                if kept is not None and kept[0] <= s.max_entries and kept[1] <= s.max_bytes:
                    return  # within both bounds, by the count the triggers keep (it never errs low)
                count, size = connection.execute("SELECT COUNT(*), TOTAL(size) FROM memo").fetchone()
                connection.execute("INSERT OR REPLACE INTO memo_size VALUES (0, ?, ?)", (count, size))
                if count > s.max_entries or size > s.max_bytes:
                    keep_count, keep_bytes, drop = int(s.max_entries * 0.9), s.max_bytes * 0.9, 0
                    for (entry_size,) in connection.execute("SELECT size FROM memo ORDER BY stored"):
                        if count - drop <= keep_count and size <= keep_bytes:
                            break
                        drop += 1
                        size -= entry_size
                    connection.execute("DELETE FROM memo WHERE key IN (SELECT key FROM memo ORDER BY stored "
                                       "LIMIT ?)", (drop,))
        except sqlite3.OperationalError as exc:
            log.debug("memo not pruned this time: %s", exc)
        except (sqlite3.Error, OSError) as exc:
            self._give_up(exc)

    def close(self) -> None:
        """Keep what was handed over, then let go of the database and the memo's thread."""
        self._submit(self._disconnect).result()
        if self._thread is not None and self._thread_pid == os.getpid():
            self._thread.shutdown()
        self._thread = None

    def _disconnect(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None and self._local.pid == os.getpid():
            connection.close()
        self._local = threading.local()


def _nothing() -> None:
    return None


def _log_failure(done: Future[Any]) -> None:
    if not done.cancelled() and done.exception() is not None:  # the memo never costs an answer: say so, no more
        log.debug("answers not memoised: %s", done.exception())


class RememberingClient:
    """An endpoint client that keeps each successful answer in the host memo the moment it arrives.

    Stored per call, not per batch, so a worker killed half way through a batch has kept what it
    was paid for, and the task's next attempt finds it.
    """

    def __init__(self, client: Any, memo: HostMemo, scope: str) -> None:
        self.client, self.memo, self.scope = client, memo, scope
        self.config = client.config
        # Keys made for text values, and the parameters they were made with: the batch's keys are made
        # before its calls, and each call's answers are stored under the same keys, hashed once.
        self._known: dict[str, bytes] = {}
        self._known_for: tuple[Any, Any, Callable[[Any], bytes]] | None = None  # params, format, their digest

    def keys(self, values: Sequence[Any], params: Mapping[str, Any] | None,
             response_format: Mapping[str, Any] | None) -> list[bytes | None]:
        """One key per row (None for a NULL row); a value repeated in the batch is hashed once."""
        known = self._known_for
        if known is None or known[0] is not params or known[1] is not response_format:
            config = self.config
            known = self._known_for = (params, response_format, value_digest(
                config, params, response_format, self.scope, config.name, config.url()))
            self._known = {}
        seen, digest = self._known, known[2]
        keys: list[bytes | None] = []
        for value in values:
            if value is None:
                keys.append(None)
            elif isinstance(value, str):
                key = seen.get(value)
                if key is None:
                    key = seen[value] = digest(value)
                keys.append(key)
            else:
                keys.append(digest(value))
        return keys

    async def call(self, inputs: Sequence[Any], params: Mapping[str, Any] | None = None,
                   response_format: Mapping[str, Any] | None = None) -> Any:
        result = await self.client.call(inputs, params, response_format)
        if result.error is None and result.results is not None and len(result.results) == len(inputs):
            try:
                keys = self.keys(inputs, params, response_format)
                self.memo.store_soon([(key, answer) for key, answer in zip(keys, result.results)
                                      if key is not None])
            except Exception as exc:  # noqa: BLE001 - the memo never costs an answer
                log.debug("answer not memoised: %s", exc)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


_handles: dict[tuple, HostMemo] = {}
_handles_lock = threading.Lock()


def host_memo(settings: MemoSettings) -> HostMemo | None:
    """This process's handle for the settings' folder and bounds (opened once, pruned once), or None when off."""
    if not settings.enabled:
        return None
    bounds = (settings.folder, settings.max_age_s, settings.max_entries, settings.max_bytes, os.getpid())
    with _handles_lock:
        memo = _handles.get(bounds)
        if memo is None:
            memo = _handles[bounds] = HostMemo(settings)
    return memo if memo.usable else None


def _remembered(answer: Any, convert: Callable[[Any], Any] | None) -> RowOutcome:
    """A row answered from the memo: no request, no attempt, no token, no latency of its own."""
    try:
        return RowOutcome(value=convert(answer) if convert is not None else answer, answered=True)
    except EndpointError as exc:
        return RowOutcome(error=exc)


#: Requests asked as one slice of a batch. A batch (an Arrow batch: 10,000 rows by default) is asked slice by
#: slice, each slice's memo lookup and requests started before the next slice is prepared: the first
#: requests go out a slice's preparation after the batch arrives, not the whole batch's (a tenth to a
#: quarter of a second for 10,000 rows), and the event loop is never held so long that answers wait to be
#: read. A slice is this many requests' worth of rows, so packed inputs (embeddings) fill requests as before.
SLICE = 256


async def answer_remembered(settings: MemoSettings | None, client: Any, values: Sequence[Any], *,
                            params: Mapping[str, Any] | None = None,
                            response_format: Mapping[str, Any] | None = None,
                            convert: Callable[[Any], Any] | None = None, memo: Any = None) -> list[RowOutcome]:
    """``answer_rows``, with the rows whose answer the host already paid for filled from the memo and every
    fresh answer kept there as it arrives; one outcome per value, in order. Asked ``SLICE`` requests' worth of
    rows at a time, all slices in flight together; a value repeated in two slices is asked once (through
    ``memo``, a new ``batch._engine.Memo`` when None, made to hold at least the batch)."""
    host = host_memo(settings) if settings is not None else None
    asker = RememberingClient(client, host, settings.scope) if host is not None and settings is not None else None
    rows = SLICE * inputs_per_request(client.config)
    if len(values) > rows:
        memo = memo if memo is not None else Memo()
        memo.limit = max(memo.limit, len(values))  # a repeat anywhere in the batch waits for its first ask
    slices: list[asyncio.Future[list[RowOutcome]]] = []
    try:
        for start in range(0, len(values), rows):
            part = values[start:start + rows]
            keys, found = await _looked_up(asker, part, params, response_format)
            slices.append(asyncio.ensure_future(_answered(asker if keys else client, part, keys, found, params,
                                                          response_format, convert, memo)))
            await asyncio.sleep(0)  # the loop turns: this slice's requests start while the next is prepared
        parts = await asyncio.gather(*slices)
        if asker is not None:
            # Kept before the batch is done: Spark's next evaluation of the plan (a sort's second job, a retried
            # task) may look them up at once, from another worker.
            await asyncio.wrap_future(asker.memo.kept())
    except BaseException:
        for pending in slices:
            pending.cancel()
        raise
    return parts[0] if len(parts) == 1 else [outcome for part in parts for outcome in part]


async def _looked_up(asker: RememberingClient | None, values: Sequence[Any], params: Mapping[str, Any] | None,
                     response_format: Mapping[str, Any] | None) -> tuple[list[bytes | None], dict[bytes, Any]]:
    """The rows' keys and the answers the host memo holds for them (none without a memo)."""
    if asker is None:
        return [], {}
    try:
        keys = asker.keys(values, params, response_format)
    except Exception as exc:  # noqa: BLE001 - a value we cannot fingerprint is simply asked
        log.debug("batch not memoised: %s", exc)
        return [], {}
    return keys, await asyncio.wrap_future(asker.memo.lookup_soon(list({k for k in keys if k is not None})))


async def _answered(client: Any, values: Sequence[Any], keys: list[bytes | None], found: dict[bytes, Any],
                    params: Mapping[str, Any] | None, response_format: Mapping[str, Any] | None,
                    convert: Callable[[Any], Any] | None, memo: Any) -> list[RowOutcome]:
    asked = values if not found else [None if k in found else v for v, k in zip(values, keys)]
    outcomes = await answer_rows(client, asked, params=params, response_format=response_format, convert=convert,
                                 memo=memo)
    if found:
        hits: dict[bytes, RowOutcome] = {}
        for index, key in enumerate(keys):
            if key in found:
                hit = hits.get(key)
                outcomes[index] = hit if hit is not None else hits.setdefault(key, _remembered(found[key], convert))
    return outcomes
