"""The compiled-kernel cache: memory in front of disk, keyed by everything that changes a cubin.

Compiling one kernel costs seconds (numba's front end) and ptxas ~0.15 s, so cubins are kept:

* in memory, per process: a dict lookup, about a microsecond;
* on disk, one file per kernel under ``cache_dir()``: ``$PYFP8GEMM_CACHE_DIR`` if set, else
  ``~/.cache/pyfp8gemm``. Set ``PYFP8GEMM_DISABLE_DISK_CACHE=1`` to neither read nor write it
  (the memory cache still works).

Usage::

    parts = {"name": "fp8_gemm_1d2d_m128_n112", "block_m": 128, ..., "arch": "sm_90a",
             "sources": source_hash([device_package]), **toolchain.versions()}
    cubin, meta = get_or_build(parts, lambda: (compile_it(), {"name": kernel_name}))

and, for the hot path, memoize what you build from it by your own cheap tuple key::

    kernel = memo.get(config_tuple) or memo.get_or_create(config_tuple, load_kernel)

What the disk cache trusts (docs/CACHE.md has the whole story):

* The directory only if it is the user's own: owned by the current user (or by root), not
  writable by group or others, and under parents nobody else can swap out. It is created 0700.
  Any other directory turns the disk cache off for the process, with one warning naming the
  directory and the fix, unless ``PYFP8GEMM_CACHE_TRUST_SHARED=1`` says to trust it anyway.
* An entry only if it is intact and is the one asked for: each entry records its full key parts
  and kernel name next to a sha256 of its content; a read checks the checksum, that the parts
  hash to the key asked for, and that the names agree. Anything else is treated as corrupt:
  removed and rebuilt. Entries and lock files are opened without following symlinks.

Entries are written atomically (temp file in the same folder, fsync, ``os.replace``). When
several processes miss the same key, an advisory lock (``fcntl.flock`` on a per-key lock file)
lets one build while the others wait, for at most ``$PYFP8GEMM_CACHE_LOCK_TIMEOUT`` seconds
(default 60); past that they build without the lock (the atomic rename keeps that safe) and say
so. A directory that cannot be written (read-only, full) or an entry path that cannot be used is
reported once per process, never rebuilt on every call.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import struct
import tempfile
import threading
import time
import types
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not on POSIX: run without cross-process locks (still correct, see above)
    fcntl = None

__all__ = [
    "CACHE_DIR_ENV",
    "DISABLE_DISK_CACHE_ENV",
    "TRUST_SHARED_ENV",
    "LOCK_TIMEOUT_ENV",
    "cache_dir",
    "disk_cache_disabled",
    "trust_shared",
    "lock_timeout",
    "key_of",
    "source_hash",
    "CorruptEntryError",
    "UntrustedCacheDirError",
    "Entry",
    "encode_entry",
    "decode_entry",
    "untrusted_reason",
    "KernelStore",
    "disk_store",
    "reset_disk_state",
    "status",
    "describe_status",
    "MemoryCache",
    "memo",
    "kernel_memory",
    "get_or_build",
]

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "PYFP8GEMM_CACHE_DIR"
DISABLE_DISK_CACHE_ENV = "PYFP8GEMM_DISABLE_DISK_CACHE"
TRUST_SHARED_ENV = "PYFP8GEMM_CACHE_TRUST_SHARED"
LOCK_TIMEOUT_ENV = "PYFP8GEMM_CACHE_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT_S = 60.0
# A temp file is written and renamed within a second; one this old was left by a crash.
STALE_TEMP_AGE_S = 3600.0

_TRUE = ("1", "true", "yes", "on")


def cache_dir() -> Path:
    """The disk cache folder: $PYFP8GEMM_CACHE_DIR, else ~/.cache/pyfp8gemm.

    Only names it: the folder is created (0700) by the first kernel written to it, so asking
    where the cache is (``python -m pyfp8gemm``) leaves no trace.
    """
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "pyfp8gemm"


def disk_cache_disabled() -> bool:
    """True when $PYFP8GEMM_DISABLE_DISK_CACHE is set to a true value (1, true, yes, on)."""
    return os.environ.get(DISABLE_DISK_CACHE_ENV, "").strip().lower() in _TRUE


def trust_shared() -> bool:
    """True when $PYFP8GEMM_CACHE_TRUST_SHARED opts in to a directory others own or can write."""
    return os.environ.get(TRUST_SHARED_ENV, "").strip().lower() in _TRUE


def lock_timeout() -> float:
    """Seconds to wait for another process's build lock: $PYFP8GEMM_CACHE_LOCK_TIMEOUT, else 60."""
    raw = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"${LOCK_TIMEOUT_ENV} must be a finite number of seconds >= 0, "
                         f"got {raw!r}")
    return value


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
# Which directories the disk cache trusts
# ---------------------------------------------------------------------------------------------


class UntrustedCacheDirError(PermissionError):
    """The cache directory is not the user's own (see ``untrusted_reason``)."""

    def __init__(self, root: str | os.PathLike, reason: str):
        self.root, self.reason = Path(root), reason
        super().__init__(
            f"pyfp8gemm: not using the kernel cache directory {root}: {reason}. Anyone who can "
            f"write there could plant kernels that this process would run, so the disk cache is "
            f"off (kernels are compiled in memory). Fix: use a directory of your own (unset "
            f"{CACHE_DIR_ENV} for ~/.cache/pyfp8gemm, or `chmod go-w` a directory you own), or, "
            f"only if everyone who can write there is trusted, set {TRUST_SHARED_ENV}=1. "
            f"See docs/CACHE.md.")


def _trusted_owner_uids() -> set[int]:
    """Owners whose directories we trust: ourselves, and root (who controls this Python anyway)."""
    return {os.geteuid(), 0}


def _user(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _writable_by_others(mode: int) -> str | None:
    writers = [who for who, bit in (("group", 0o020), ("others", 0o002)) if mode & bit]
    return " and ".join(writers) if writers else None


def untrusted_reason(root: str | os.PathLike) -> str | None:
    """Why the existing directory ``root`` must not hold a cache we run code from, or None.

    Trusted: a directory owned by the current user or root, writable by nobody else, whose
    parents (after resolving symlinks) are owned by the current user or root and writable by
    nobody else unless sticky (like /tmp, where others cannot rename what is ours).
    """
    if not hasattr(os, "geteuid"):  # no POSIX ownership to check (Windows)
        return None
    path = Path(os.path.realpath(root))
    try:
        info = os.stat(path)
    except OSError as error:
        return f"cannot stat it ({error.strerror})"
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a directory"
    owners = _trusted_owner_uids()
    if info.st_uid not in owners:
        return f"it is owned by {_user(info.st_uid)}, not by you ({_user(os.geteuid())})"
    if writers := _writable_by_others(info.st_mode):
        return f"it is writable by {writers} (mode {stat.S_IMODE(info.st_mode):04o})"
    for parent in path.parents:
        try:
            parent_info = os.stat(parent)
        except OSError as error:
            return f"cannot stat its parent {parent} ({error.strerror})"
        if parent_info.st_uid not in owners:
            return (f"its parent {parent} is owned by {_user(parent_info.st_uid)}, who could "
                    f"replace it")
        writers = _writable_by_others(parent_info.st_mode)
        if writers and not parent_info.st_mode & stat.S_ISVTX:
            return (f"its parent {parent} is writable by {writers} (mode "
                    f"{stat.S_IMODE(parent_info.st_mode):04o}, not sticky), who could replace it")
    return None


def _make_private_dir(root: Path) -> None:
    """Create ``root`` 0700 (its missing parents get the usual mode, like ~/.cache)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(root, 0o700)
    except FileExistsError:
        return
    os.chmod(root, 0o700)  # exactly 0700, whatever the umask


# ---------------------------------------------------------------------------------------------
# Entry files
# ---------------------------------------------------------------------------------------------

# Entry file: header, then the envelope JSON (UTF-8), then the payload.
#   magic 8s | format version u32 | envelope length u32 | payload length u64 |
#   sha256(envelope + payload) 32s
# The envelope is {"key", "name", "parts", "meta"}: the entry names the key it was built for.
_MAGIC = b"PF8GKC\r\n"  # \r\n catches text-mode mangling
_FORMAT_VERSION = 2
_HEADER = struct.Struct("<8sIIQ32s")
_ENTRY_SUFFIX = ".entry"
_LOCK_SUFFIX = ".lock"
_KEY_PATTERN = re.compile(r"[0-9a-f]{16,128}")
_ENTRY_NAME = re.compile(r"([0-9a-f]{16,128})\.entry")
_TEMP_NAME = re.compile(r"\.[0-9a-f]{16}\..+\.tmp")

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted in an entry's place cannot block us
_BINARY = getattr(os, "O_BINARY", 0)


class CorruptEntryError(ValueError):
    """A cache entry file that is not a complete, intact entry for the key asked for."""


@dataclass(frozen=True)
class Entry:
    """A decoded, verified cache entry."""
    key: str
    name: str | None      # the kernel's name (key parts' "name", else meta's), None if neither
    parts: dict           # the full key parts: key_of(parts) == key
    meta: dict
    payload: bytes


def _kernel_name(parts: dict, meta: dict) -> str | None:
    name = parts.get("name", meta.get("name"))
    return name if isinstance(name, str) else None


def encode_entry(payload: bytes, meta: dict, *, key: str, parts: dict) -> bytes:
    """The bytes of one cache entry file (``key`` must be ``key_of(parts)``)."""
    if key_of(parts) != key:
        raise ValueError(f"key {key} is not key_of(parts) ({key_of(parts)})")
    name = _kernel_name(parts, meta)
    if "name" in parts and "name" in meta and meta["name"] != parts["name"]:
        raise ValueError(f"meta name {meta['name']!r} differs from the key's {parts['name']!r}")
    envelope = _canonical_json({"key": key, "name": name, "parts": parts, "meta": meta}).encode()
    digest = hashlib.sha256(envelope + payload).digest()
    header = _HEADER.pack(_MAGIC, _FORMAT_VERSION, len(envelope), len(payload), digest)
    return header + envelope + bytes(payload)


def decode_entry(data: bytes, key: str | None = None) -> Entry:
    """The verified Entry in the bytes of an entry file; CorruptEntryError if anything is off.

    Checked: header, length, sha256, the envelope's fields and types, that the recorded parts
    hash to the recorded key, that the names agree and (given ``key``) that it is that key's.
    """
    if len(data) < _HEADER.size:
        raise CorruptEntryError(f"shorter ({len(data)} bytes) than the header")
    magic, version, envelope_length, payload_length, digest = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise CorruptEntryError(f"bad magic {magic!r}")
    if version != _FORMAT_VERSION:
        raise CorruptEntryError(f"format version {version}, expected {_FORMAT_VERSION}")
    expected_length = _HEADER.size + envelope_length + payload_length
    if len(data) != expected_length:
        raise CorruptEntryError(f"{len(data)} bytes, the header says {expected_length}")
    body = data[_HEADER.size:]
    if hashlib.sha256(body).digest() != digest:
        raise CorruptEntryError("checksum mismatch")
    try:
        envelope = json.loads(bytes(body[:envelope_length]).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptEntryError(f"bad envelope JSON: {error}") from error
    if not isinstance(envelope, dict):
        raise CorruptEntryError(f"envelope is a {type(envelope).__name__}, not an object")
    for field_name, types_ in (("key", str), ("parts", dict), ("meta", dict),
                               ("name", (str, type(None)))):
        if not isinstance(envelope.get(field_name, ...), types_):
            raise CorruptEntryError(f"envelope field {field_name!r} missing or of the wrong type")
    recorded, parts, meta = envelope["key"], envelope["parts"], envelope["meta"]
    if key_of(parts) != recorded:
        raise CorruptEntryError(f"its key parts hash to {key_of(parts)[:16]}..., not to its "
                                f"recorded key {recorded[:16]}...")
    if key is not None and recorded != key:
        raise CorruptEntryError(f"it is the entry of key {recorded[:16]}... (name "
                                f"{envelope['name']!r}), not of {key[:16]}...")
    if envelope["name"] != _kernel_name(parts, meta) or (
            "name" in parts and "name" in meta and meta["name"] != parts["name"]):
        raise CorruptEntryError(f"kernel names disagree: entry {envelope['name']!r}, key "
                                f"{parts.get('name')!r}, meta {meta.get('name')!r}")
    return Entry(recorded, envelope["name"], parts, meta, bytes(body[envelope_length:]))


# ---------------------------------------------------------------------------------------------
# Disk store
# ---------------------------------------------------------------------------------------------


class KernelStore:
    """Cache entries on disk, one file per key under ``root`` (default: ``cache_dir()``).

    Creating one creates ``root`` (0700) if missing and raises UntrustedCacheDirError for a
    directory that is not the user's own (``untrusted_reason``), unless ``trust_shared()``.
    Safe to share between threads and processes: entries appear atomically and are verified on
    read. Keys are hex strings (``key_of``). A directory that turns out not to be writable is
    remembered (``read_only``): later writes and locks are skipped, reads go on.
    """

    def __init__(self, root: str | os.PathLike | None = None, *, create: bool = True):
        given = Path(root).expanduser() if root is not None else cache_dir()
        if create and not os.path.lexists(given):
            _make_private_dir(given)
        # Resolved once: later symlink swaps of a path component do not redirect us.
        self.root = Path(os.path.realpath(given))
        if not self.root.is_dir():
            raise NotADirectoryError(f"kernel cache directory {given} is not a directory")
        if not trust_shared():
            reason = untrusted_reason(self.root)
            if reason is not None:
                raise UntrustedCacheDirError(given, reason)
        self.read_only = False
        self._unusable: set[str] = set()   # entry paths we could neither use nor remove
        self._warned: set[str] = set()
        self._temp_files_checked = False
        self._guard = threading.Lock()

    def __repr__(self) -> str:
        return f"KernelStore({str(self.root)!r})"

    def path_of(self, key: str) -> Path:
        """The entry file of ``key``."""
        if not isinstance(key, str) or not _KEY_PATTERN.fullmatch(key):
            raise ValueError(f"cache key must be a lowercase hex string (key_of), got {key!r}")
        return self.root / f"{key}{_ENTRY_SUFFIX}"

    # -- reading ---------------------------------------------------------------------------

    def get(self, key: str) -> tuple[bytes, dict] | None:
        """(payload, meta) stored under ``key``, or None if absent or unusable (then removed)."""
        entry = self.read(key)
        return None if entry is None else (entry.payload, entry.meta)

    def read(self, key: str) -> Entry | None:
        """The verified Entry of ``key``, or None. Whatever is in its place that is not a valid
        entry of this key (corrupt, another key's, a symlink, a directory, unreadable) is
        removed, so that the rebuilt entry can take its place."""
        path = self.path_of(key)
        if str(path) in self._unusable:
            return None
        try:
            descriptor = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | _NONBLOCK | _BINARY)
        except FileNotFoundError:
            return None
        except OSError as error:
            why = ("a symbolic link (never followed)" if error.errno == errno.ELOOP
                   else f"unreadable ({error.strerror})")
            self._discard(path, why)
            return None
        try:
            identity = os.fstat(descriptor)
            if not stat.S_ISREG(identity.st_mode):
                os.close(descriptor)
                descriptor = None
                self._discard(path, "not a regular file")
                return None
            with os.fdopen(descriptor, "rb") as file:
                descriptor = None
                data = file.read()
        except OSError as error:
            self._discard(path, f"unreadable ({error.strerror})")
            return None
        finally:
            if descriptor is not None:
                os.close(descriptor)
        try:
            return decode_entry(data, key=key)
        except CorruptEntryError as error:
            log.warning("pyfp8gemm cache: removing corrupt entry %s (%s); it will be rebuilt",
                        path, error)
            self._remove_if_same_file(path, identity)
            return None

    def keys(self) -> list[str]:
        """The keys that have an entry file (not verified; ``read`` verifies)."""
        try:
            names = os.listdir(self.root)
        except OSError:
            return []
        return sorted(m.group(1) for name in names if (m := _ENTRY_NAME.fullmatch(name)))

    def usage(self) -> tuple[int, int]:
        """(entry files, their bytes)."""
        count = size = 0
        for key in self.keys():
            try:
                info = os.lstat(self.path_of(key))
            except OSError:
                continue
            count, size = count + 1, size + info.st_size
        return count, size

    # -- writing ---------------------------------------------------------------------------

    def put(self, key: str, payload: bytes, meta: dict, *, parts: dict) -> bool:
        """Store (payload, meta) under ``key`` (= ``key_of(parts)``), atomically: readers see
        the old entry or the new. Returns False, having warned (once), when it cannot."""
        path = self.path_of(key)
        data = encode_entry(bytes(payload), meta, key=key, parts=parts)
        if self.read_only or str(path) in self._unusable:
            return False
        self._remove_stale_temp_files_once()
        try:
            # The temp file lives in the same folder so that os.replace is an atomic rename;
            # mkstemp creates it 0600 with O_EXCL (a planted name or symlink makes it retry).
            descriptor, temp_name = tempfile.mkstemp(dir=self.root, prefix=f".{key[:16]}.",
                                                     suffix=".tmp")
        except OSError as error:
            self._mark_read_only(error)
            return False
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())  # the data is on disk before the name points at it
            try:
                os.replace(temp_name, path)
            except OSError as error:
                if error.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                    raise
                # Something that is not a file (a directory) sits where the entry goes.
                if not self._discard(path, "a directory, not an entry"):
                    raise
                os.replace(temp_name, path)
        except OSError as error:
            _unlink_quietly(temp_name)
            if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC,
                               getattr(errno, "EDQUOT", errno.ENOSPC)):
                self._mark_read_only(error)
            else:  # the memory cache keeps the kernel for this process; say so once
                self._warn_once(str(path), "pyfp8gemm cache: cannot write %s (%s); this kernel "
                                "stays in memory", path, error)
            return False
        except BaseException:
            _unlink_quietly(temp_name)
            raise
        self._fsync_folder()
        return True

    def remove(self, key: str) -> None:
        """Delete the entry of ``key`` if there is one."""
        _unlink_quietly(self.path_of(key))

    def clear(self) -> int:
        """Delete every entry, lock and temp file; returns how many entries went."""
        removed = 0
        for key in self.keys():
            self.remove(key)
            removed += 1
        for name in os.listdir(self.root):
            if name.endswith(_LOCK_SUFFIX) or _TEMP_NAME.fullmatch(name):
                _unlink_quietly(self.root / name)
        return removed

    def remove_stale_temp_files(self, max_age_s: float = STALE_TEMP_AGE_S) -> int:
        """Delete temp files older than ``max_age_s`` (left by a process that died mid-write)."""
        removed = 0
        now = time.time()
        try:
            names = os.listdir(self.root)
        except OSError:
            return 0
        for name in names:
            if not _TEMP_NAME.fullmatch(name):
                continue
            path = self.root / name
            try:
                info = os.lstat(path)
                if stat.S_ISDIR(info.st_mode) or now - info.st_mtime < max_age_s:
                    continue
                os.unlink(path)
                removed += 1
            except OSError:
                continue
        if removed:
            log.info("pyfp8gemm cache: removed %d stale temp file(s) from %s", removed, self.root)
        return removed

    # -- locking ---------------------------------------------------------------------------

    @contextmanager
    def lock(self, key: str, timeout: float | None = None) -> Iterator[bool]:
        """Hold an exclusive advisory lock for building ``key``; yields whether it is held.

        Waits at most ``timeout`` seconds (default ``lock_timeout()``) for another holder, then
        yields False with a warning. Where locks do not work (no fcntl, a file system without
        flock, a read-only directory) this yields False at once. Callers go ahead either way:
        a duplicate build, but still one valid entry.
        """
        if fcntl is None or self.read_only:
            yield False
            return
        wait = lock_timeout() if timeout is None else timeout
        lock_path = self.root / f"{self.path_of(key).stem}{_LOCK_SUFFIX}"
        descriptor = self._open_lock(lock_path)
        if descriptor is None:
            yield False
            return
        try:
            locked = self._acquire(descriptor, lock_path, wait)
            try:
                yield locked
            finally:
                if locked:
                    fcntl.flock(descriptor, fcntl.LOCK_UN)
        finally:
            os.close(descriptor)
        # Lock files stay: deleting one while another process waits on it would break the lock.

    def _open_lock(self, lock_path: Path) -> int | None:
        flags = os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC | _NONBLOCK
        for attempt in range(2):
            try:
                descriptor = os.open(lock_path, flags, 0o600)
            except OSError as error:
                if error.errno == errno.ELOOP and attempt == 0:
                    # A symlink in the lock's place: never followed, removed, then ours.
                    log.warning("pyfp8gemm cache: removing %s: a symbolic link, not a lock file",
                                lock_path)
                    _unlink_quietly(lock_path)
                    continue
                log.debug("pyfp8gemm cache: cannot open lock file %s: %s", lock_path, error)
                return None
            if stat.S_ISREG(os.fstat(descriptor).st_mode):
                return descriptor
            os.close(descriptor)
            log.debug("pyfp8gemm cache: lock file %s is not a regular file", lock_path)
            return None
        return None

    def _acquire(self, descriptor: int, lock_path: Path, wait: float) -> bool:
        deadline = time.monotonic() + wait
        pause = 0.01
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            except OSError as error:  # e.g. ENOLCK on a network file system
                log.debug("pyfp8gemm cache: flock(%s) failed: %s", lock_path, error)
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning(
                    "pyfp8gemm cache: waited %.0f s for the lock %s (another process is building "
                    "this kernel, or holds the file); building without the lock (the entry is "
                    "still written atomically). $%s sets the wait.", wait, lock_path,
                    LOCK_TIMEOUT_ENV)
                return False
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.2)

    # -- helpers ---------------------------------------------------------------------------

    def _discard(self, path: Path, why: str) -> bool:
        """Remove what sits at an entry's path; if that fails, stop using the path (warn once).
        Returns whether it is gone."""
        try:
            info = os.lstat(path)
            if stat.S_ISDIR(info.st_mode):
                shutil.rmtree(path)  # never follows symlinks inside
            else:
                os.unlink(path)
            log.warning("pyfp8gemm cache: removed %s: %s; the kernel will be rebuilt", path, why)
            return True
        except FileNotFoundError:
            return True
        except OSError as error:
            self._unusable.add(str(path))
            self._warn_once(str(path), "pyfp8gemm cache: %s is %s and cannot be removed (%s); "
                            "this kernel is compiled in memory, without the disk cache",
                            path, why, error)
            return False

    def _mark_read_only(self, error: OSError) -> None:
        with self._guard:
            if self.read_only:
                return
            self.read_only = True
        log.warning("pyfp8gemm cache: cannot write to %s (%s); new kernels stay in memory for "
                    "this process (entries already there are still read)", self.root, error)

    def _warn_once(self, topic: str, message: str, *args) -> None:
        with self._guard:
            if topic in self._warned:
                return
            self._warned.add(topic)
        log.warning(message, *args)

    def _remove_stale_temp_files_once(self) -> None:
        if not self._temp_files_checked:
            self._temp_files_checked = True
            self.remove_stale_temp_files()

    def _remove_if_same_file(self, path: Path, identity: os.stat_result) -> None:
        """Unlink ``path`` unless another process has meanwhile replaced it with a new entry."""
        try:
            current = os.lstat(path)
            if (current.st_ino, current.st_dev) == (identity.st_ino, identity.st_dev):
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as error:
            self._unusable.add(str(path))
            self._warn_once(str(path), "pyfp8gemm cache: cannot remove %s: %s", path, error)

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


def _unlink_quietly(path: str | os.PathLike) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# The disk cache of each directory, decided once per process: a KernelStore, or None (off,
# warned once) for a directory that is refused or cannot be created.
_disk_states: dict[tuple[str, bool], KernelStore | None] = {}
_disk_guard = threading.Lock()


def disk_store(root: str | os.PathLike | None = None) -> KernelStore | None:
    """The KernelStore of ``root`` (default ``cache_dir()``), or None when the disk cache is off
    there: a directory that is not the user's own or cannot be created. Decided (and warned
    about) once per process and directory."""
    path = Path(root).expanduser() if root is not None else cache_dir()
    state_key = (str(path), trust_shared())
    try:
        return _disk_states[state_key]
    except KeyError:
        pass
    with _disk_guard:
        if state_key in _disk_states:
            return _disk_states[state_key]
        try:
            disk = KernelStore(path)
        except UntrustedCacheDirError as error:
            log.warning("%s", error)
            disk = None
        except OSError as error:
            log.warning("pyfp8gemm cache: no disk cache at %s (%s); kernels are compiled in "
                        "memory for this process", path, error)
            disk = None
        _disk_states[state_key] = disk
        return disk


def reset_disk_state() -> None:
    """Forget what ``disk_store`` decided (after fixing a directory's permissions; tests)."""
    with _disk_guard:
        _disk_states.clear()


def status(root: str | os.PathLike | None = None) -> dict:
    """What the disk cache is doing, without creating anything: directory, set_by, exists,
    disabled, trusted, reason, trust_shared, writable, entries, bytes, usable."""
    path = Path(root).expanduser() if root is not None else cache_dir()
    info = dict(directory=str(path),
                set_by=f"${CACHE_DIR_ENV}" if root is None and os.environ.get(CACHE_DIR_ENV)
                else ("argument" if root is not None else "default"),
                exists=path.is_dir(), disabled=disk_cache_disabled(),
                trust_shared=trust_shared(), trusted=None, reason=None, writable=None,
                entries=0, bytes=0)
    if info["exists"]:
        info["reason"] = untrusted_reason(path)
        info["trusted"] = info["reason"] is None or info["trust_shared"]
        info["writable"] = os.access(path, os.W_OK)
        if info["trusted"]:
            info["entries"], info["bytes"] = KernelStore(path, create=False).usage()
    info["usable"] = not info["disabled"] and info["trusted"] is not False
    return info


def describe_status(info: dict | None = None) -> str:
    """``status()`` in one line, for reports."""
    info = status() if info is None else info
    if info["disabled"]:
        return (f"off (${DISABLE_DISK_CACHE_ENV} is set): kernels are compiled in memory, "
                f"per process")
    if not info["exists"]:
        return "not created yet: made (mode 0700) when the first kernel is compiled"
    if not info["trusted"]:
        return (f"off, directory refused: {info['reason']} (see docs/CACHE.md; "
                f"{TRUST_SHARED_ENV}=1 trusts it anyway)")
    size = f"{info['entries']} kernels, {info['bytes'] / 2**20:.1f} MiB"
    shared = f", trusted by ${TRUST_SHARED_ENV}" if info["reason"] else ""
    if not info["writable"]:
        return f"read-only: {size}{shared}; kernels not in it are compiled in memory"
    return f"on: {size}{shared}"


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

# What a validator may raise about a disk entry's metadata (a missing field is a KeyError).
_INVALID_META = (ValueError, TypeError, KeyError)


def _checked_build_result(result: Any) -> tuple[bytes, dict]:
    """Check that ``build()`` returned (bytes-like, dict); the payload as bytes and the meta as
    JSON gives it back (what a later disk hit returns)."""
    if not (isinstance(result, tuple) and len(result) == 2):
        raise TypeError(f"build() must return (payload: bytes, meta: dict), got {type(result)}")
    payload, meta = result
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"build() payload must be bytes, got {type(payload).__name__}")
    if not isinstance(meta, dict):
        raise TypeError(f"build() meta must be a dict, got {type(meta).__name__}")
    return bytes(payload), json.loads(_canonical_json(meta))


def _disk_hit(store: KernelStore, key: str, validate) -> tuple[bytes, dict] | None:
    entry = store.read(key)
    if entry is None:
        return None
    if validate is None:
        return entry.payload, entry.meta
    try:
        return entry.payload, validate(entry.payload, entry.meta)
    except _INVALID_META as error:
        log.warning("pyfp8gemm cache: removing entry %s: %s; it will be rebuilt",
                    store.path_of(key), error)
        store.remove(key)
        return None


def _load_or_build_on_disk(store: KernelStore, key: str, parts: dict, build, validate
                           ) -> tuple[bytes, dict]:
    """Disk hit, or build under the per-key file lock and store."""
    hit = _disk_hit(store, key, validate)
    if hit is not None:
        return hit
    with store.lock(key):
        hit = _disk_hit(store, key, validate)  # another process may have built it meanwhile
        if hit is not None:
            return hit
        payload, meta = _checked_build_result(build())
        result = (payload, meta if validate is None else validate(payload, meta))
        store.put(key, payload, meta, parts=parts)  # warns (once) and goes on if it cannot
        return result


def get_or_build(
    key_parts: dict,
    build: Callable[[], tuple[bytes, dict]],
    store: KernelStore | None = None,
    validate: Callable[[bytes, dict], dict] | None = None,
) -> tuple[bytes, dict]:
    """(payload, meta) for ``key_parts``: from memory, else disk, else ``build()`` and store.

    ``build`` returns (payload bytes, JSON-serializable meta dict). It runs at most once per key
    in a process, and (with working file locks) once across processes sharing the cache folder.
    ``validate(payload, meta) -> meta`` checks (and may complete) what is loaded: a disk entry
    it rejects (ValueError, TypeError, KeyError) is removed and rebuilt; for a fresh build its
    error propagates. ``store`` defaults to ``disk_store()`` (None there: no disk); the disk is
    skipped entirely when $PYFP8GEMM_DISABLE_DISK_CACHE=1. Treat the returned meta as
    read-only: it is shared.
    """
    key = key_of(key_parts)
    entry = kernel_memory.get(key)
    if entry is not None:
        return entry

    def load_or_build() -> tuple[bytes, dict]:
        disk = None
        if not disk_cache_disabled():
            disk = store if store is not None else disk_store()
        if disk is not None:
            return _load_or_build_on_disk(disk, key, key_parts, build, validate)
        payload, meta = _checked_build_result(build())
        return payload, meta if validate is None else validate(payload, meta)

    return kernel_memory.get_or_create(key, load_or_build)
