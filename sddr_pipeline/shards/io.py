"""Reading and writing shards on any fsspec filesystem, atomically and with retries.

URIs are local paths, ``file://``, ``s3://`` (s3fs), ``gs://`` (gcsfs) or anything else
fsspec knows; ``storage_options`` go to the filesystem (e.g. ``{"client_kwargs":
{"endpoint_url": ...}}`` for an S3-compatible server). Nothing here imports Ray: shards
are plain Parquet files that pyarrow or pandas read directly.

Publishing is atomic: on object stores (S3, GCS, Azure) a file is one whole-object PUT,
which appears complete or not at all; elsewhere it is written to a ``.tmp-`` name in the
same folder (never ending in ``.parquet``) and renamed. Transient storage errors
(:func:`is_transient`: lost connections, timeouts, 5xx, throttling) are retried with
exponential backoff for a bounded time (``max_wait_s``); missing files, permission
errors and anything else are not.
"""
from __future__ import annotations

import errno
import io
import logging
import random
import time
import uuid
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from .schema import DICTIONARY_COLUMNS, parse_file_metadata

T = TypeVar("T")
log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
TMP_SUFFIX = ".partial"
OBJECT_STORE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"})
#: Errors that say the request itself is wrong; retrying cannot help.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError,
)


#: Default bound on the time spent retrying one storage operation (seconds).
DEFAULT_MAX_WAIT_S = 120.0
#: ``OSError`` numbers of transient failures (s3fs maps 503/SlowDown to EBUSY, 500 to EREMOTEIO).
TRANSIENT_ERRNOS = frozenset(getattr(errno, name) for name in (
    "EBUSY", "EREMOTEIO", "ETIMEDOUT", "ECONNRESET", "ECONNREFUSED", "ECONNABORTED", "EPIPE", "EHOSTUNREACH",
    "ENETUNREACH", "ENETDOWN", "EAGAIN") if hasattr(errno, name))
#: Exception classes (by qualified name, so none of these libraries is imported) of lost
#: connections and timeouts; subclasses count too.
TRANSIENT_TYPES = frozenset({
    "botocore.exceptions.ConnectionError",  # EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError
    "botocore.exceptions.HTTPClientError",  # ConnectionClosedError, ReadTimeoutError, ResponseStreamingError
    "aiohttp.client_exceptions.ClientConnectionError",  # ServerDisconnectedError, ClientConnectorError
    "aiohttp.client_exceptions.ClientPayloadError",
    "urllib3.exceptions.ProtocolError",
    "urllib3.exceptions.TimeoutError",  # NewConnectionError, ReadTimeoutError
    "http.client.IncompleteRead",
})
#: 5xx statuses that say the server cannot do this request at all (Not Implemented, HTTP Version Not Supported).
PERMANENT_STATUSES = frozenset({501, 505})
#: Error codes of object stores that mean "slow down" or "try again".
THROTTLING_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled", "RequestLimitExceeded",
    "TooManyRequestsException", "ProvisionedThroughputExceededException", "RequestTimeout", "RequestTimeoutException",
    "InternalError", "ServiceUnavailable", "429", "500", "502", "503", "504",
})


class StorageError(OSError):
    """A storage operation still failed after its retries."""


def filesystem(uri: str, storage_options: Mapping[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """``(filesystem, path)`` for a URI; the path is what that filesystem's methods take."""
    fs, path = fsspec.core.url_to_fs(str(uri), **dict(storage_options or {}))
    return fs, path.rstrip("/") or path


def protocols(fs: AbstractFileSystem) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def is_object_store(fs: AbstractFileSystem) -> bool:
    """True for stores where one PUT publishes a whole object (no rename needed)."""
    return any(p in OBJECT_STORE_PROTOCOLS for p in protocols(fs))


def join(path: str, *parts: str) -> str:
    """``path/part/...`` with forward slashes (fsspec paths are POSIX-like everywhere)."""
    out = path.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def unstrip(fs: AbstractFileSystem, path: str) -> str:
    """A full URI for a filesystem path (``s3://bucket/key``; local paths stay paths)."""
    if "file" in protocols(fs) or "local" in protocols(fs):
        return path
    return fs.unstrip_protocol(path)


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status an error carries: botocore's ``response`` dict, else a ``status``,
    ``status_code`` or ``code`` attribute (aiohttp, gcsfs); None when there is none."""
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int):
            return status
    for attr in ("status", "status_code", "code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
            return value
    return None


def _error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None


def is_transient(exc: BaseException) -> bool:
    """True for storage errors that a later try can get past: lost or refused connections
    (botocore ``EndpointConnectionError``/``ConnectionClosedError``, aiohttp and urllib3
    connection errors as s3fs surfaces them), timeouts, HTTP 5xx (not 501/505) and 429, throttling
    (``SlowDown``, ``Throttling``, ...), and the ``OSError`` numbers s3fs turns those into.
    Missing files, refused permissions and other errors are not transient. Errors that
    wrap another (``raise ... from``, as s3fs does) are judged by the whole chain."""
    if isinstance(exc, (StorageError, *PERMANENT_ERRORS)):  # a StorageError already spent its retries
        return False
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ConnectionError, TimeoutError)):
            return True
        if isinstance(current, OSError) and current.errno in TRANSIENT_ERRNOS:
            return True
        if any(f"{c.__module__}.{c.__qualname__}" in TRANSIENT_TYPES for c in type(current).__mro__):
            return True
        status = _http_status(current)
        if status is not None and ((status >= 500 and status not in PERMANENT_STATUSES) or status == 429):
            return True
        if _error_code(current) in THROTTLING_CODES:
            return True
        current = current.__cause__
    return False


def retry(fn: Callable[[], T], *, what: str, attempts: int | None = None, max_wait_s: float = DEFAULT_MAX_WAIT_S,
          base_delay: float = 0.2, max_delay: float = 10.0, sleep: Callable[[float], None] = time.sleep,
          clock: Callable[[], float] = time.monotonic) -> T:
    """Call ``fn`` until it succeeds, retrying :func:`is_transient` errors with exponential
    backoff (doubling from ``base_delay`` up to ``max_delay``, with jitter) for at most
    ``max_wait_s`` seconds in all and, when given, ``attempts`` calls. Other errors are
    raised at once. Raises :class:`StorageError` naming ``what`` when the time or the
    attempts are used up, so an outage shorter than ``max_wait_s`` costs no work."""
    if attempts is not None and attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    if not max_wait_s >= 0:
        raise ValueError(f"max_wait_s must be a non-negative number of seconds, got {max_wait_s}")
    start = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            elapsed = clock() - start
            delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * (0.5 + random.random())
            delay = min(delay, max_wait_s - elapsed)
            if (attempts is not None and attempt >= attempts) or delay <= 0:
                raise StorageError(f"{what} failed after {attempt} attempts in {elapsed:.1f} s "
                                   f"(storage retry limit {max_wait_s:g} s): {type(exc).__name__}: {exc}") from exc
            log.warning("%s failed (%s: %s); retry %d in %.2fs", what, type(exc).__name__, exc, attempt, delay)
            sleep(delay)


def temporary_name(final_name: str) -> str:
    """The name a file is written under before it is published (hidden, not ``*.parquet``)."""
    return f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{final_name}{TMP_SUFFIX}"


def publish_bytes(fs: AbstractFileSystem, path: str, data: bytes, *, attempts: int | None = None,
                  max_wait_s: float = DEFAULT_MAX_WAIT_S) -> None:
    """Make ``data`` appear at ``path`` whole, replacing any previous file (see module doc)."""
    parent = path.rsplit("/", 1)[0]
    if is_object_store(fs):
        retry(lambda: fs.pipe_file(path, data), what=f"writing {unstrip(fs, path)}", attempts=attempts,
              max_wait_s=max_wait_s)
        return
    tmp = join(parent, temporary_name(path.rsplit("/", 1)[-1]))

    def write_then_rename() -> None:
        fs.makedirs(parent, exist_ok=True)
        try:
            with fs.open(tmp, "wb") as fh:
                fh.write(data)
            fs.mv(tmp, path)
        except BaseException:
            if fs.exists(tmp):
                fs.rm(tmp)
            raise

    retry(write_then_rename, what=f"writing {unstrip(fs, path)}", attempts=attempts, max_wait_s=max_wait_s)


def table_bytes(table: pa.Table, *, metadata: Mapping[bytes, bytes] | None = None,
                row_group_size: int = 64) -> bytes:
    """A Parquet file of ``table`` in memory: zstd, dictionaries for the short string
    columns only (binary arrays do not repeat), ``metadata`` merged into the file's."""
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    buf = io.BytesIO()
    dictionary = [c for c in table.column_names if c in DICTIONARY_COLUMNS]
    pq.write_table(table, buf, compression="zstd", use_dictionary=dictionary,
                   row_group_size=max(1, row_group_size))
    return buf.getvalue()


def write_table(fs: AbstractFileSystem, path: str, table: pa.Table, *,
                metadata: Mapping[bytes, bytes] | None = None, attempts: int | None = None,
                max_wait_s: float = DEFAULT_MAX_WAIT_S, row_group_size: int = 64) -> int:
    """Publish ``table`` as one Parquet file at ``path``; returns its size in bytes."""
    data = table_bytes(table, metadata=metadata, row_group_size=row_group_size)
    publish_bytes(fs, path, data, attempts=attempts, max_wait_s=max_wait_s)
    return len(data)


def read_bytes(fs: AbstractFileSystem, path: str, *, attempts: int | None = None,
               max_wait_s: float = DEFAULT_MAX_WAIT_S) -> bytes:
    """A whole file's bytes, with retries on transient errors."""
    return retry(lambda: fs.cat_file(path), what=f"reading {unstrip(fs, path)}", attempts=attempts,
                 max_wait_s=max_wait_s)


def remove_file(fs: AbstractFileSystem, path: str, *, attempts: int | None = None,
                max_wait_s: float = DEFAULT_MAX_WAIT_S) -> None:
    """Delete ``path`` if it exists, with retries on transient errors."""
    def remove() -> None:
        if fs.exists(path):
            fs.rm(path)

    retry(remove, what=f"removing {unstrip(fs, path)}", attempts=attempts, max_wait_s=max_wait_s)


def remove_temporaries(fs: AbstractFileSystem, folder: str) -> int:
    """Delete ``.tmp-*`` leftovers of interrupted writes directly under ``folder``."""
    if not fs.exists(folder):
        return 0
    names = [p for p in fs.ls(folder, detail=False) if p.rstrip("/").rsplit("/", 1)[-1].startswith(TMP_PREFIX)]
    for p in names:
        fs.rm(p)
    return len(names)


def parquet_files(fs: AbstractFileSystem, folder: str) -> list[str]:
    """Published ``*.parquet`` files directly under ``folder``, sorted (hidden files skipped)."""
    if not fs.exists(folder):
        return []
    out = []
    for p in fs.ls(folder, detail=False):
        name = p.rstrip("/").rsplit("/", 1)[-1]
        if name.endswith(".parquet") and not name.startswith((".", "_")):
            out.append(p)
    return sorted(out)


def read_parquet(fs: AbstractFileSystem, paths: Sequence[str], *, columns: Iterable[str] | None = None,
                 schema: pa.Schema | None = None) -> pa.Table:
    """Concatenate Parquet files into one table (``schema`` for an empty list)."""
    cols = list(columns) if columns is not None else None
    tables = [pq.read_table(p, filesystem=fs, columns=cols) for p in paths]
    if not tables:
        if schema is None:
            raise ValueError("no Parquet files to read and no schema given")
        return schema.empty_table().select(cols) if cols else schema.empty_table()
    return pa.concat_tables(tables, promote_options="default")


def read_metadata(uri: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``sddr.*`` file metadata of one shard (format, kind, shard, versions, config)."""
    fs, path = filesystem(uri, storage_options)
    with fs.open(path, "rb") as fh:
        return parse_file_metadata(pq.read_metadata(fh).metadata)
