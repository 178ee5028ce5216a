"""The compiled-kernel cache: memory in front of disk, keyed by everything that changes a cubin.

Compiling one kernel costs seconds (numba's front end) and ptxas ~0.15 s, so cubins are kept:

* in memory, per process: a dict lookup, about a microsecond;
* on disk, one file per kernel under ``cache_dir()``: ``$PYFP8GEMM_CACHE_DIR`` if set, else
  ``~/.cache/pyfp8gemm``. Set ``PYFP8GEMM_DISABLE_DISK_CACHE=1`` to neither read nor write it
  (the memory cache still works).

Usage::

    parts = {"kernel": "fp8_gemm_1d2d", "block_m": 128, ..., "arch": "sm_90a",
             "sources": source_hash([device_package]), **toolchain.versions()}
    cubin, meta = get_or_build(parts, lambda: (compile_it(), {"name": kernel_name}))

and, for the hot path, memoize what you build from it by your own cheap tuple key::

    kernel = memo.get(config_tuple) or memo.get_or_create(config_tuple, load_kernel)

Disk entries are written atomically (temp file in the same folder, fsync, ``os.replace``), carry
a sha256 of their content, and are checked on every read: a truncated or corrupt entry is removed
and reported as a miss, so the kernel is rebuilt. When several processes miss the same key, an
advisory lock (``fcntl.flock`` on a per-key lock file) lets one build while the others wait and
then read its entry; without working locks each builds and the last atomic write wins, which is
still one valid entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import tempfile
import threading
import types
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not on POSIX: run without cross-process locks (still correct, see above)
    fcntl = None

__all__ = [
    "CACHE_DIR_ENV",
    "DISABLE_DISK_CACHE_ENV",
    "cache_dir",
    "disk_cache_disabled",
    "key_of",
    "source_hash",
    "KernelStore",
    "MemoryCache",
    "memo",
    "kernel_memory",
    "get_or_build",
]

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "PYFP8GEMM_CACHE_DIR"
DISABLE_DISK_CACHE_ENV = "PYFP8GEMM_DISABLE_DISK_CACHE"


def cache_dir() -> Path:
    """The disk cache folder: $PYFP8GEMM_CACHE_DIR, else ~/.cache/pyfp8gemm (created if missing)."""
    configured = os.environ.get(CACHE_DIR_ENV)
    root = Path(configured).expanduser() if configured else Path.home() / ".cache" / "pyfp8gemm"
    root.mkdir(parents=True, exist_ok=True)
    return root


def disk_cache_disabled() -> bool:
    """True when $PYFP8GEMM_DISABLE_DISK_CACHE is set to a true value (1, true, yes, on)."""
    return os.environ.get(DISABLE_DISK_CACHE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    """Encode the few non-JSON types a key part may reasonably be; refuse the rest."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cache key part of type {type(value).__name__} is not JSON-encodable: {value!r}")


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False, default=_json_default)


def key_of(parts: dict) -> str:
    """A stable sha256 hex key for ``parts`` (dict order does not matter; tuples equal lists).

    Put in everything that changes the cubin: the kernel config, ``source_hash`` of the device
    sources, ``toolchain.versions()``, the arch.
    """
    if not isinstance(parts, dict):
        raise TypeError(f"key parts must be a dict, got {type(parts).__name__}")
    return hashlib.sha256(_canonical_json(parts).encode()).hexdigest()


def _source_files(item: str | os.PathLike | types.ModuleType) -> Iterator[tuple[str, Path]]:
    """(name to hash under, file) for one item of ``source_hash``'s argument."""
    if isinstance(item, types.ModuleType):
        package_dirs = list(getattr(item, "__path__", ()))
        if package_dirs:  # a package: every .py file under it
            for package_dir in package_dirs:
                yield from _source_files(Path(package_dir))
            return
        if not getattr(item, "__file__", None):
            raise ValueError(f"module {item.__name__} has no source file to hash")
        item = item.__file__
    path = Path(item)
    if path.is_dir():
        for file in sorted(path.rglob("*.py")):
            if "__pycache__" not in file.parts:
                yield f"{path.name}/{file.relative_to(path).as_posix()}", file
    elif path.is_file():
        yield path.name, path
    else:
        raise FileNotFoundError(f"no source file or folder at {path}")


def source_hash(paths_or_modules: Iterable[str | os.PathLike | types.ModuleType]) -> str:
    """sha256 hex of the contents (and names) of source files, to put in a cache key.

    Each item is a file, a folder (all ``*.py`` under it), a module (its file) or a package
    (all ``*.py`` under it). The order of the items does not matter.
    """
    if isinstance(paths_or_modules, (str, os.PathLike, types.ModuleType)):
        paths_or_modules = [paths_or_modules]
    files = {}
    for item in paths_or_modules:
        for name, file in _source_files(item):
            files[str(file.resolve())] = name
    digest = hashlib.sha256()
    for resolved in sorted(files):
        content = Path(resolved).read_bytes()
        # Length-prefix each field so that no two different file sets hash the same stream.
        for field in (files[resolved].encode(), content):
            digest.update(struct.pack("<Q", len(field)))
            digest.update(field)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Disk store
# ---------------------------------------------------------------------------------------------

# Entry file: header, then the meta JSON (UTF-8), then the payload.
#   magic 8s | format version u32 | meta length u32 | payload length u64 | sha256(meta + payload) 32s
_MAGIC = b"PF8GKC\r\n"  # \r\n catches text-mode mangling
_FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIIQ32s")
_ENTRY_SUFFIX = ".entry"
_LOCK_SUFFIX = ".lock"
_KEY_PATTERN = re.compile(r"[0-9a-f]{16,128}")


class CorruptEntryError(ValueError):
    """A cache entry file that is not a complete, intact entry."""


def encode_entry(payload: bytes, meta: dict) -> bytes:
    """The bytes of one cache entry file."""
    meta_json = _canonical_json(meta).encode()
    digest = hashlib.sha256(meta_json + payload).digest()
    header = _HEADER.pack(_MAGIC, _FORMAT_VERSION, len(meta_json), len(payload), digest)
    return header + meta_json + payload


def decode_entry(data: bytes) -> tuple[bytes, dict]:
    """(payload, meta) from the bytes of an entry file; CorruptEntryError if anything is off."""
    if len(data) < _HEADER.size:
        raise CorruptEntryError(f"shorter ({len(data)} bytes) than the header")
    magic, version, meta_length, payload_length, digest = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise CorruptEntryError(f"bad magic {magic!r}")
    if version != _FORMAT_VERSION:
        raise CorruptEntryError(f"format version {version}, expected {_FORMAT_VERSION}")
    expected_length = _HEADER.size + meta_length + payload_length
    if len(data) != expected_length:
        raise CorruptEntryError(f"{len(data)} bytes, the header says {expected_length}")
    body = data[_HEADER.size:]
    if hashlib.sha256(body).digest() != digest:
        raise CorruptEntryError("checksum mismatch")
    try:
        meta = json.loads(body[:meta_length].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptEntryError(f"bad meta JSON: {error}") from error
    if not isinstance(meta, dict):
        raise CorruptEntryError(f"meta is a {type(meta).__name__}, not an object")
    return bytes(body[meta_length:]), meta


class KernelStore:
    """Cache entries on disk, one file per key under ``root`` (default: ``cache_dir()``).

    Safe to share between threads and processes: entries appear atomically and are verified on
    read. Keys are hex strings (``key_of``).
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else cache_dir()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"KernelStore({str(self.root)!r})"

    def path_of(self, key: str) -> Path:
        """The entry file of ``key``."""
        if not isinstance(key, str) or not _KEY_PATTERN.fullmatch(key):
            raise ValueError(f"cache key must be a lowercase hex string (key_of), got {key!r}")
        return self.root / f"{key}{_ENTRY_SUFFIX}"

    def get(self, key: str) -> tuple[bytes, dict] | None:
        """(payload, meta) stored under ``key``, or None if absent or corrupt (then removed)."""
        path = self.path_of(key)
        try:
            with open(path, "rb") as file:
                data = file.read()
                identity = os.fstat(file.fileno())
        except FileNotFoundError:
            return None
        except OSError as error:  # unreadable: treat as a miss, the build will try to rewrite it
            log.warning("pyfp8gemm cache: cannot read %s: %s", path, error)
            return None
        try:
            return decode_entry(data)
        except CorruptEntryError as error:
            log.warning("pyfp8gemm cache: removing corrupt entry %s (%s); it will be rebuilt",
                        path, error)
            self._remove_if_same_file(path, identity)
            return None

    def put(self, key: str, payload: bytes, meta: dict) -> None:
        """Store (payload, meta) under ``key``, atomically: readers see the old entry or the new."""
        path = self.path_of(key)
        data = encode_entry(bytes(payload), meta)
        # The temp file lives in the same folder so that os.replace is an atomic rename.
        descriptor, temp_name = tempfile.mkstemp(dir=self.root, prefix=f".{key[:16]}.",
                                                 suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())  # the data is on disk before the name points at it
            os.replace(temp_name, path)
        except BaseException:
            try:
                os.unlink(temp_name)
            except FileNotFoundError:
                pass
            raise
        self._fsync_folder()

    def remove(self, key: str) -> None:
        """Delete the entry of ``key`` if there is one."""
        try:
            os.unlink(self.path_of(key))
        except FileNotFoundError:
            pass

    @contextmanager
    def lock(self, key: str) -> Iterator[bool]:
        """Hold an exclusive advisory lock for building ``key``; yields whether it is held.

        Where locks do not work (no fcntl, a file system without flock) this yields False and
        callers go ahead unlocked: duplicate builds, but still one valid entry.
        """
        if fcntl is None:
            yield False
            return
        lock_path = self.root / f"{self.path_of(key).stem}{_LOCK_SUFFIX}"
        try:
            lock_file = open(lock_path, "a+b")
        except OSError as error:
            log.debug("pyfp8gemm cache: cannot open lock file %s: %s", lock_path, error)
            yield False
            return
        with lock_file:
            try:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
                locked = True
            except OSError as error:
                log.debug("pyfp8gemm cache: flock(%s) failed: %s", lock_path, error)
                locked = False
            try:
                yield locked
            finally:
                if locked:
                    fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
        # Lock files stay: deleting one while another process waits on it would break the lock.

    def _remove_if_same_file(self, path: Path, identity: os.stat_result) -> None:
        """Unlink ``path`` unless another process has meanwhile replaced it with a new entry."""
        try:
            current = os.stat(path)
            if (current.st_ino, current.st_dev) == (identity.st_ino, identity.st_dev):
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as error:
            log.warning("pyfp8gemm cache: cannot remove %s: %s", path, error)

    def _fsync_folder(self) -> None:
        """Make the rename durable too (best effort: not every file system allows it)."""
        try:
            folder = os.open(self.root, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(folder)
        except OSError:
            pass
        finally:
            os.close(folder)


# ---------------------------------------------------------------------------------------------
# Memory cache and get_or_build
# ---------------------------------------------------------------------------------------------


class MemoryCache:
    """A process-wide dict with thread-safe, build-once insertion.

    ``get`` is a bare dict lookup (safe under concurrent inserts, about a microsecond), for the
    launch path. ``get_or_create`` runs the factory at most once per key even when several
    threads miss together; different keys build in parallel.
    """

    def __init__(self):
        self._values: dict[Hashable, Any] = {}
        self._key_locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, key: Hashable, default: Any = None) -> Any:
        return self._values.get(key, default)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)

    def put(self, key: Hashable, value: Any) -> None:
        self._values[key] = value

    def get_or_create(self, key: Hashable, factory: Callable[[], Any]) -> Any:
        """The value of ``key``, made by ``factory()`` (once) if missing."""
        try:
            return self._values[key]
        except KeyError:
            pass
        with self._lock_for(key):
            try:
                return self._values[key]
            except KeyError:
                value = factory()
                self._values[key] = value
                return value

    def clear(self) -> None:
        with self._guard:
            self._values.clear()
            self._key_locks.clear()

    def _lock_for(self, key: Hashable) -> threading.Lock:
        with self._guard:
            return self._key_locks.setdefault(key, threading.Lock())


# For callers to memoize what they make from a cubin (loaded modules, launch configs) by their
# own cheap tuple keys, so a hot call skips key_of's JSON + sha256 too.
memo = MemoryCache()

# get_or_build's own memory layer: key_of(parts) -> (payload, meta).
kernel_memory = MemoryCache()


def _checked_build_result(result: Any) -> tuple[bytes, dict]:
    """Check that ``build()`` returned (bytes-like, dict) and normalize the payload to bytes."""
    if not (isinstance(result, tuple) and len(result) == 2):
        raise TypeError(f"build() must return (payload: bytes, meta: dict), got {type(result)}")
    payload, meta = result
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"build() payload must be bytes, got {type(payload).__name__}")
    if not isinstance(meta, dict):
        raise TypeError(f"build() meta must be a dict, got {type(meta).__name__}")
    _canonical_json(meta)  # fail here, not after the expensive build is thrown away on put
    return bytes(payload), meta


def _load_or_build_on_disk(
    store: KernelStore, key: str, build: Callable[[], tuple[bytes, dict]]
) -> tuple[bytes, dict]:
    """Disk hit, or build under the per-key file lock and store."""
    entry = store.get(key)
    if entry is not None:
        return entry
    with store.lock(key):
        entry = store.get(key)  # another process may have built it while we waited
        if entry is not None:
            return entry
        payload, meta = _checked_build_result(build())
        try:
            store.put(key, payload, meta)
        except OSError as error:  # read-only or full disk: the cache is only an optimization
            log.warning("pyfp8gemm cache: cannot write %s: %s", store.path_of(key), error)
        # Return what is now on disk, canonicalized the same way as for a later disk hit.
        return payload, json.loads(_canonical_json(meta))


def get_or_build(
    key_parts: dict,
    build: Callable[[], tuple[bytes, dict]],
    store: KernelStore | None = None,
) -> tuple[bytes, dict]:
    """(payload, meta) for ``key_parts``: from memory, else disk, else ``build()`` and store.

    ``build`` returns (payload bytes, JSON-serializable meta dict). It runs at most once per key
    in a process, and (with working file locks) once across processes sharing the cache folder.
    ``store`` defaults to a KernelStore at ``cache_dir()``; the disk is skipped entirely when
    $PYFP8GEMM_DISABLE_DISK_CACHE=1. Treat the returned meta as read-only: it is shared.
    """
    key = key_of(key_parts)
    entry = kernel_memory.get(key)
    if entry is not None:
        return entry

    def load_or_build() -> tuple[bytes, dict]:
        disk = None
        if not disk_cache_disabled():
            try:
                disk = store or KernelStore()
            except OSError as error:  # e.g. an unwritable home: run without the disk cache
                log.warning("pyfp8gemm cache: no disk cache (%s)", error)
        if disk is not None:
            return _load_or_build_on_disk(disk, key, build)
        payload, meta = _checked_build_result(build())
        return payload, json.loads(_canonical_json(meta))

    return kernel_memory.get_or_create(key, load_or_build)
