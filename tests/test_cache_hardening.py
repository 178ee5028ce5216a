"""The kernel cache trusts only itself (issue 17), on the CPU with fake builds.

Each test is one way an attacker or an unlucky user got a process to run a kernel it did not
build, hang or rebuild forever: a foreign or world-writable directory, a forged or copied entry,
a symlink in an entry's or a lock's place, a missing metadata field, a lock held forever, an
entry path that is a directory, a read-only directory, stale temp files.
"""

import errno
import hashlib
import json
import logging
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from pyfp8gemm.cache import store as store_module
from pyfp8gemm.cache.store import (
    KernelStore, UntrustedCacheDirError, disk_store, get_or_build, key_of,
)

PARTS = {"name": "fp8_gemm_test_kernel", "block_m": 128, "sources": "ab" * 32}
OTHER = {"name": "fp8_gemm_other_kernel", "block_m": 64, "sources": "ab" * 32}
LOGGER = "pyfp8gemm.cache.store"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("PYFP8GEMM_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("PYFP8GEMM_DISABLE_DISK_CACHE", "PYFP8GEMM_CACHE_TRUST_SHARED",
                 "PYFP8GEMM_CACHE_LOCK_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    store_module.kernel_memory.clear()
    store_module.reset_disk_state()
    yield
    store_module.kernel_memory.clear()
    store_module.reset_disk_state()


class Builds:
    """A fake build that counts its calls."""

    def __init__(self, payload=b"\x7fELF fake cubin", meta=None):
        self.calls, self.payload = 0, payload
        self.meta = {"name": "fp8_gemm_test_kernel"} if meta is None else meta

    def __call__(self):
        self.calls += 1
        return self.payload, dict(self.meta)


def warnings_about(caplog, text):
    return [r for r in caplog.records if r.levelno >= logging.WARNING and text in r.getMessage()]


def fresh_process():
    """What a new process sees: empty memory caches, nothing decided about the directory."""
    store_module.kernel_memory.clear()
    store_module.reset_disk_state()


# ---------------------------------------------------------------------------------------------
# The directory
# ---------------------------------------------------------------------------------------------


def test_a_new_cache_dir_is_private(tmp_path):
    root = tmp_path / "a" / "b" / "cache"
    KernelStore(root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_a_new_cache_dir_is_private_whatever_the_umask(tmp_path):
    old = os.umask(0o277)  # would leave a mkdir'ed directory 0500: unusable
    try:
        KernelStore(tmp_path / "cache")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700


@pytest.mark.parametrize("mode, writers", [(0o777, "group and others"), (0o770, "group"),
                                           (0o702, "others")])
def test_a_dir_others_can_write_is_refused(tmp_path, mode, writers):
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(mode)
    with pytest.raises(UntrustedCacheDirError) as raised:
        KernelStore(root)
    message = str(raised.value)
    assert str(root) in message and f"writable by {writers}" in message
    assert "PYFP8GEMM_CACHE_TRUST_SHARED=1" in message and "chmod go-w" in message


def test_a_dir_owned_by_someone_else_is_refused(tmp_path, monkeypatch):
    root = tmp_path / "theirs"
    root.mkdir(mode=0o755)
    # Run as a user who owns nothing here (as root, chown is not needed to show it).
    monkeypatch.setattr(store_module, "_trusted_owner_uids", lambda: {987654})
    with pytest.raises(UntrustedCacheDirError, match=r"owned by .*not by you"):
        KernelStore(root)


def test_a_dir_under_a_parent_others_can_write_is_refused(tmp_path):
    parent = tmp_path / "open"
    parent.mkdir()
    parent.chmod(0o777)  # anyone could rename our cache away and put theirs in its place
    root = parent / "cache"
    root.mkdir(mode=0o700)
    with pytest.raises(UntrustedCacheDirError, match="its parent .* not sticky"):
        KernelStore(root)
    parent.chmod(0o1777)  # sticky, like /tmp: others cannot rename what is ours
    assert KernelStore(root).root == root.resolve()


def test_a_refused_dir_turns_the_disk_cache_off_with_one_warning(tmp_path, monkeypatch, caplog):
    root = tmp_path / "cache"
    root.mkdir()
    root.chmod(0o777)
    build = Builds()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        first = get_or_build(PARTS, build)
        get_or_build(OTHER, Builds(meta={"name": "fp8_gemm_other_kernel"}))
    assert first == (build.payload, build.meta)  # still works, from memory
    assert len(warnings_about(caplog, "not using the kernel cache directory")) == 1
    assert list(root.iterdir()) == []  # nothing written there
    # An entry planted in the refused directory is never read.
    monkeypatch.setenv("PYFP8GEMM_CACHE_TRUST_SHARED", "1")
    KernelStore(root).put(key_of(PARTS), b"\x7fELF planted", {"name": PARTS["name"]},
                          parts=PARTS)
    monkeypatch.delenv("PYFP8GEMM_CACHE_TRUST_SHARED")
    fresh_process()
    assert get_or_build(PARTS, build)[0] == build.payload and build.calls == 2


def test_trust_shared_opts_in(tmp_path, monkeypatch):
    root = tmp_path / "team"
    root.mkdir()
    root.chmod(0o777)
    monkeypatch.setenv("PYFP8GEMM_CACHE_TRUST_SHARED", "1")
    build = Builds()
    get_or_build(PARTS, build, store=KernelStore(root))
    assert (root / f"{key_of(PARTS)}.entry").is_file()
    assert store_module.status(root)["trusted"] is True


def test_status_creates_nothing_and_says_why(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    info = store_module.status()
    assert info["directory"] == str(root) and not info["exists"] and not root.exists()
    assert "not created yet" in store_module.describe_status(info)
    root.mkdir()
    root.chmod(0o777)
    described = store_module.describe_status()
    assert described.startswith("off, directory refused") and "writable by" in described
    monkeypatch.setenv("PYFP8GEMM_DISABLE_DISK_CACHE", "1")
    assert "PYFP8GEMM_DISABLE_DISK_CACHE" in store_module.describe_status()
    monkeypatch.delenv("PYFP8GEMM_DISABLE_DISK_CACHE")
    root.chmod(0o700)
    get_or_build(PARTS, Builds())
    info = store_module.status()
    assert (info["trusted"], info["entries"]) == (True, 1) and info["bytes"] > 0
    assert store_module.describe_status(info).startswith("on: 1 kernels")


# ---------------------------------------------------------------------------------------------
# Entries: their own key, their own name, no symlinks
# ---------------------------------------------------------------------------------------------


def test_an_entry_copied_under_another_key_is_refused(tmp_path, caplog):
    """The issue's forged entry: kernel 10's entry under kernel 0's key was served."""
    store = KernelStore(tmp_path / "cache")
    store.put(key_of(OTHER), b"\x7fELF other kernel", {"name": OTHER["name"]}, parts=OTHER)
    target = store.path_of(key_of(PARTS))
    target.write_bytes(store.path_of(key_of(OTHER)).read_bytes())
    build = Builds()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        payload, meta = get_or_build(PARTS, build, store=store)
    assert payload == build.payload and build.calls == 1  # rebuilt, not the other kernel
    assert warnings_about(caplog, "not of")  # "it is the entry of key ..., not of ..."
    assert store.read(key_of(PARTS)).name == PARTS["name"]
    assert store.read(key_of(OTHER)).payload == b"\x7fELF other kernel"  # the original stays


def _forged(envelope: dict, payload: bytes) -> bytes:
    """An entry with a valid checksum around whatever envelope a forger likes."""
    body = json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()
    header = store_module._HEADER.pack(store_module._MAGIC, store_module._FORMAT_VERSION,
                                       len(body), len(payload),
                                       hashlib.sha256(body + payload).digest())
    return header + body + payload


@pytest.mark.parametrize("forge", [
    # claims the key but its parts are another kernel's
    lambda key: {"key": key, "name": OTHER["name"], "parts": OTHER, "meta": {}},
    # right key and parts, another kernel's name
    lambda key: {"key": key, "name": "evil", "parts": PARTS, "meta": {}},
    # meta naming another kernel
    lambda key: {"key": key, "name": PARTS["name"], "parts": PARTS,
                 "meta": {"name": "evil"}},
    # the envelope lacks a field
    lambda key: {"key": key, "name": PARTS["name"], "meta": {}},
], ids=["parts-of-another-key", "wrong-name", "meta-of-another-kernel", "no-parts"])
def test_forged_entries_with_valid_checksums_are_refused(tmp_path, forge):
    store = KernelStore(tmp_path / "cache")
    key = key_of(PARTS)
    store.path_of(key).write_bytes(_forged(forge(key), b"\x7fELF forged"))
    build = Builds()
    assert get_or_build(PARTS, build, store=store)[0] == build.payload
    assert build.calls == 1


def test_an_entry_that_is_a_symlink_is_not_followed(tmp_path):
    store = KernelStore(tmp_path / "cache")
    elsewhere = KernelStore(tmp_path / "elsewhere")
    elsewhere.put(key_of(PARTS), b"\x7fELF planted", {"name": PARTS["name"]}, parts=PARTS)
    link = store.path_of(key_of(PARTS))
    link.symlink_to(elsewhere.path_of(key_of(PARTS)))
    build = Builds()
    assert get_or_build(PARTS, build, store=store)[0] == build.payload and build.calls == 1
    assert not link.is_symlink() and store.read(key_of(PARTS)).payload == build.payload
    assert elsewhere.read(key_of(PARTS)).payload == b"\x7fELF planted"  # target untouched


def test_a_lock_that_is_a_symlink_is_not_followed(tmp_path):
    """A lock file planted as a symlink let a root process create a file through it."""
    store = KernelStore(tmp_path / "cache")
    victim = tmp_path / "victim-file"
    lock_path = store.root / f"{key_of(PARTS)}.lock"
    lock_path.symlink_to(victim)
    with store.lock(key_of(PARTS)) as locked:
        assert locked
    assert not victim.exists()
    assert lock_path.is_file() and not lock_path.is_symlink()


def test_an_entry_missing_a_metadata_field_is_rebuilt_not_a_keyerror(tmp_path, caplog):
    """A checksum-valid entry without `registers` raised KeyError in every process."""
    def validate(payload, meta):
        return {**meta, "registers": int(meta["registers"])}

    store = KernelStore(tmp_path / "cache")
    store.put(key_of(PARTS), b"\x7fELF old", {"name": PARTS["name"]}, parts=PARTS)  # no field
    build = Builds(meta={"name": PARTS["name"], "registers": 168})
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        payload, meta = get_or_build(PARTS, build, store=store, validate=validate)
    assert meta["registers"] == 168 and build.calls == 1
    assert warnings_about(caplog, "'registers'")
    fresh_process()
    assert get_or_build(PARTS, build, store=store, validate=validate)[1]["registers"] == 168
    assert build.calls == 1  # the rebuilt entry is good: a disk hit now


def test_a_bad_fresh_build_raises(tmp_path):
    def validate(payload, meta):
        raise ValueError("not a cubin")

    with pytest.raises(ValueError, match="not a cubin"):
        get_or_build(PARTS, Builds(), store=KernelStore(tmp_path / "cache"), validate=validate)


# ---------------------------------------------------------------------------------------------
# Unusable paths are dealt with once
# ---------------------------------------------------------------------------------------------


def test_a_directory_in_an_entrys_place_is_removed_once(tmp_path, caplog):
    store = KernelStore(tmp_path / "cache")
    (store.path_of(key_of(PARTS)) / "junk").mkdir(parents=True)
    build = Builds()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        get_or_build(PARTS, build, store=store)
    assert store.path_of(key_of(PARTS)).is_file()
    fresh_process()
    get_or_build(PARTS, build, store=store)
    assert build.calls == 1  # the next process finds the entry: not rebuilt forever


def test_an_entry_path_that_cannot_be_cleared_warns_once(tmp_path, monkeypatch, caplog):
    store = KernelStore(tmp_path / "cache")
    (store.path_of(key_of(PARTS)) / "junk").mkdir(parents=True)

    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(store_module.shutil, "rmtree", refuse)
    build = Builds()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(3):
            store_module.kernel_memory.clear()
            assert get_or_build(PARTS, build, store=store)[0] == build.payload
    assert len(warnings_about(caplog, "cannot be removed")) == 1


def test_an_unreadable_entry_is_replaced(tmp_path, monkeypatch):
    store = KernelStore(tmp_path / "cache")
    key = key_of(PARTS)
    store.put(key, b"\x7fELF old", {"name": PARTS["name"]}, parts=PARTS)
    real_open = os.open
    entry_path = str(store.path_of(key))

    def deny_once(path, flags, *args):
        if str(path) == entry_path and not flags & os.O_CREAT and not deny_once.done:
            deny_once.done = True  # (root reads mode-000 files: simulate the EACCES)
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    deny_once.done = False
    monkeypatch.setattr(store_module.os, "open", deny_once)
    build = Builds()
    assert get_or_build(PARTS, build, store=store)[0] == build.payload and build.calls == 1
    monkeypatch.undo()
    assert store.read(key).payload == build.payload


def test_a_read_only_cache_dir_is_noticed_once(tmp_path, monkeypatch, caplog):
    store = KernelStore(tmp_path / "cache")
    store.put(key_of(OTHER), b"\x7fELF other", {"name": OTHER["name"]}, parts=OTHER)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(store_module.tempfile, "mkstemp", read_only)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for parts in (PARTS, {**PARTS, "block_m": 256}, {**PARTS, "block_m": 64}):
            get_or_build(parts, Builds(), store=store)
    assert store.read_only
    assert len(warnings_about(caplog, "cannot write to")) == 1
    with store.lock(key_of(PARTS)) as locked:  # no lock files either
        assert not locked
    assert get_or_build(OTHER, Builds(), store=store)[0] == b"\x7fELF other"  # reads go on


# ---------------------------------------------------------------------------------------------
# Locks with a deadline, stale temp files
# ---------------------------------------------------------------------------------------------


def test_a_held_lock_is_waited_for_only_until_the_deadline(tmp_path, monkeypatch, caplog):
    """Another process (here: another open file description) holds the lock and never lets go."""
    fcntl = pytest.importorskip("fcntl")
    monkeypatch.setenv("PYFP8GEMM_CACHE_LOCK_TIMEOUT", "0.2")
    store = KernelStore(tmp_path / "cache")
    holder = open(store.root / f"{key_of(PARTS)}.lock", "a+b")
    fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
    results, build = [], Builds()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        worker = threading.Thread(target=lambda: results.append(
            get_or_build(PARTS, build, store=store)))
        worker.start()
        worker.join(timeout=60)  # only so that a regression fails instead of hanging forever
    holder.close()
    assert not worker.is_alive(), "get_or_build waited forever for the lock"
    assert results[0][0] == build.payload and build.calls == 1
    assert store.read(key_of(PARTS)).payload == build.payload  # and the entry was written
    assert warnings_about(caplog, "building without the lock")


def test_lock_timeout_env_is_checked(monkeypatch):
    monkeypatch.setenv("PYFP8GEMM_CACHE_LOCK_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="PYFP8GEMM_CACHE_LOCK_TIMEOUT"):
        store_module.lock_timeout()
    monkeypatch.setenv("PYFP8GEMM_CACHE_LOCK_TIMEOUT", "2.5")
    assert store_module.lock_timeout() == 2.5


def test_stale_temp_files_are_removed(tmp_path):
    store = KernelStore(tmp_path / "cache")
    stale = store.root / ".0123456789abcdef.x1y2.tmp"
    fresh = store.root / ".fedcba9876543210.z3w4.tmp"
    for path in (stale, fresh):
        path.write_bytes(b"half an entry")
    old = time.time() - 2 * store_module.STALE_TEMP_AGE_S
    os.utime(stale, (old, old))
    store.put(key_of(PARTS), b"\x7fELF", {"name": PARTS["name"]}, parts=PARTS)
    assert not stale.exists()
    assert fresh.exists()  # may be another process's write in progress


def test_disk_store_decides_once_per_directory(tmp_path, monkeypatch):
    first = disk_store()
    assert first is not None and disk_store() is first
    assert Path(first.root) == (tmp_path / "cache").resolve()
