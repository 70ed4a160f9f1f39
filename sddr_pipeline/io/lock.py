"""One writer per output folder: an exclusive lock file inside it.

``OUTPUT/.sddr.lock`` holds the holder's pid, host and start time as JSON. It is
created whole (written under a private name, then hard-linked into place, which fails
if the lock exists), so a reader never sees a half-written lock. A lock whose holder
is a dead process on this host is stale and taken over; a live holder, or one on
another host (whose liveness cannot be checked from here), is refused with an error
naming it. The lock is removed on release only if it is still ours.
"""
from __future__ import annotations

import functools
import inspect
import json
import os
import socket
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, ParamSpec, TypeVar

from .timestamps import utc_now

LOCK_NAME = ".sddr.lock"
_ATTEMPTS = 5
P = ParamSpec("P")
R = TypeVar("R")


class OutputLockError(RuntimeError):
    """The output folder is held by another writer, or cannot hold a lock."""


def _holder() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": utc_now(),
        "token": uuid.uuid4().hex,
    }


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def read_lock(path: Path) -> dict[str, Any] | None:
    """The holder recorded in the lock file ``path``; None if there is no lock."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
        pid = holder.get("pid") if isinstance(holder, dict) else None
        if not isinstance(pid, int) or pid <= 0 or not isinstance(holder.get("host"), str):
            raise ValueError("expected an object with a positive integer pid and a host")
    except ValueError as exc:
        raise OutputLockError(f"lock file {path} is unreadable ({exc}); delete it if no other run uses this folder") from exc
    return holder


def _describe(holder: dict[str, Any]) -> str:
    return f"pid {holder['pid']} on {holder['host']}" + (f", since {holder['started']}" if holder.get("started") else "")


def _is_stale(holder: dict[str, Any]) -> bool:
    return holder["host"] == socket.gethostname() and not pid_alive(holder["pid"])


def _try_create(path: Path, holder: dict[str, Any]) -> bool:
    """Create ``path`` holding ``holder`` atomically; False if a lock is already there."""
    text = json.dumps(holder) + "\n"
    tmp = path.with_name(f"{LOCK_NAME}.{holder['token']}")
    tmp.write_text(text, encoding="utf-8")
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: exclusive create, then write
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _remove_stale(path: Path, holder: dict[str, Any]) -> None:
    """Remove the stale lock ``holder``; a lock another run put there meanwhile is put back."""
    aside = path.with_name(f"{LOCK_NAME}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # another run removed it first
        return
    try:
        if read_lock(aside) != holder:
            os.link(aside, path)
    except FileExistsError:
        pass
    finally:
        aside.unlink(missing_ok=True)


def is_lock_file(path: Path) -> bool:
    """Whether ``path`` is this module's lock (or one of its private temporaries), not output."""
    return path.name == LOCK_NAME or path.name.startswith(f"{LOCK_NAME}.")


def acquire(root: Path) -> dict[str, Any]:
    """Take the lock of folder ``root`` (created if missing) and return our holder record."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise OutputLockError(f"output {root} exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    me = _holder()
    for _ in range(_ATTEMPTS):
        if _try_create(path, me):
            return me
        holder = read_lock(path)
        if holder is None:
            continue
        if not _is_stale(holder):
            raise OutputLockError(
                f"output {root} is in use by another run ({_describe(holder)}; lock file {path}); wait for it to finish, "
                f"or delete the lock file if that process is gone"
            )
        _remove_stale(path, holder)
    raise OutputLockError(f"could not take the lock {path}: other runs keep taking it")


def release(root: Path, me: dict[str, Any]) -> None:
    """Remove the lock of ``root`` if it is still ours."""
    path = Path(root) / LOCK_NAME
    try:
        holder = read_lock(path)
    except OutputLockError:
        return
    if holder is not None and holder.get("token") == me["token"]:
        path.unlink(missing_ok=True)


@contextmanager
def output_lock(root: Path) -> Iterator[dict[str, Any]]:
    """Hold the exclusive lock of output folder ``root`` for the ``with`` block.

    A folder this call created is removed again if it is still empty on exit, so a run
    refused for bad input leaves nothing behind.
    """
    root = Path(root)
    created = not root.exists()
    me = acquire(root)
    try:
        yield me
    finally:
        release(root, me)
        if created and not any(root.iterdir()):
            root.rmdir()


def holding_output_lock(output_of: Callable[[Mapping[str, Any]], Path | None],
                        error: type[Exception]) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a job so that it runs holding the lock of its output folder.

    ``output_of`` receives the job's arguments by name and returns that folder (None: no
    lock, e.g. an object store). A refusal is raised as ``error``, the job's own error
    type, so each command reports it as it reports its other start-up errors.
    """

    def decorate(job: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(job)

        @functools.wraps(job)
        def locked(*args: P.args, **kwargs: P.kwargs) -> R:
            root = output_of(signature.bind(*args, **kwargs).arguments)
            with ExitStack() as stack:
                if root is not None:
                    try:
                        stack.enter_context(output_lock(Path(root)))
                    except OutputLockError as exc:
                        raise error(str(exc)) from exc
                return job(*args, **kwargs)

        return locked

    return decorate
