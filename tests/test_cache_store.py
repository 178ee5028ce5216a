"""CPU tests of pyfp8gemm.cache.store: keys, the checksummed atomic disk store, get_or_build.

(What the store refuses to trust, locks with a deadline and unusable paths:
test_cache_hardening.py.)"""

import functools
import hashlib
import logging
import multiprocessing
import os
import re
import stat
import threading
import time
from pathlib import Path

import pytest

from pyfp8gemm.cache import store as store_module
from pyfp8gemm.cache.store import KernelStore, MemoryCache, get_or_build, key_of, source_hash

PARTS = {"kernel": "fp8_gemm_1d2d", "block_m": 128, "block_n": 112, "stages": 6,
         "arch": "sm_90a", "ptxas": "13.5.37", "sources": "ab" * 32}
STORE_LOGGER = "pyfp8gemm.cache.store"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache folder and an empty memory cache."""
    monkeypatch.setenv("PYFP8GEMM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PYFP8GEMM_DISABLE_DISK_CACHE", raising=False)
    store_module.kernel_memory.clear()
    store_module.reset_disk_state()
    yield
    store_module.kernel_memory.clear()
    store_module.reset_disk_state()


def leftover_temp_files(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------


def test_key_is_stable_and_ignores_dict_order():
    reordered = dict(reversed(list(PARTS.items())))
    assert key_of(PARTS) == key_of(reordered)
    assert key_of({"shape": (1, 2)}) == key_of({"shape": [1, 2]})
    # A sha256 in lowercase hex (the store refuses anything else as a file name) ...
    assert re.fullmatch(r"[0-9a-f]{64}", key_of(PARTS))
    # ... of the canonical JSON: sorted keys, no spaces, so every process computes the same one.
    canonical = ('{"arch":"sm_90a","block_m":128,"block_n":112,"kernel":"fp8_gemm_1d2d",'
                 '"ptxas":"13.5.37","sources":"' + "ab" * 32 + '","stages":6}')
    assert key_of(PARTS) == hashlib.sha256(canonical.encode()).hexdigest()


@pytest.mark.parametrize("name", sorted(PARTS))
def test_key_changes_when_any_part_changes(name):
    changed = dict(PARTS)
    changed[name] = f"{changed[name]}x"
    assert key_of(changed) != key_of(PARTS)


def test_key_changes_when_a_part_is_added_or_nested_value_changes():
    assert key_of({**PARTS, "cluster": 2}) != key_of(PARTS)
    assert key_of({"cfg": {"a": 1, "b": [1, 2]}}) != key_of({"cfg": {"a": 1, "b": [1, 3]}})


def test_key_refuses_values_it_cannot_encode_stably():
    with pytest.raises(TypeError):
        key_of({"f": object()})
    with pytest.raises(TypeError):
        key_of(["not", "a", "dict"])


def test_source_hash_follows_file_contents(tmp_path):
    package = tmp_path / "device"
    package.mkdir()
    (package / "a.py").write_text("A = 1\n")
    (package / "b.py").write_text("B = 2\n")
    first = source_hash([package])
    assert source_hash([package / "a.py", package / "b.py"]) == source_hash(
        [package / "b.py", package / "a.py"])  # item order does not matter
    (package / "b.py").write_text("B = 3\n")
    assert source_hash([package]) != first
    (package / "c.py").write_text("")
    assert source_hash([package]) != source_hash([package / "a.py", package / "b.py"])


def test_source_hash_of_modules_and_packages():
    import pyfp8gemm.cache as cache_package

    assert source_hash([store_module]) == source_hash(store_module.__file__)
    assert source_hash([cache_package]) != source_hash([store_module])


# ---------------------------------------------------------------------------------------------
# Disk store
# ---------------------------------------------------------------------------------------------


def test_round_trip(tmp_path):
    store = KernelStore(tmp_path)
    key = key_of(PARTS)
    assert store.get(key) is None
    payload = bytes(range(256)) * 100
    meta = {"name": "fp8_gemm_1d2d_m128_n112", "registers": 168, "smem": [1, 2]}
    assert store.put(key, payload, meta, parts=PARTS)
    assert store.get(key) == (payload, meta)
    entry = store.read(key)
    assert (entry.key, entry.parts, entry.name) == (key, PARTS, "fp8_gemm_1d2d_m128_n112")
    assert store.put(key, b"new", {"v": 2}, parts=PARTS)  # overwrite
    assert store.get(key) == (b"new", {"v": 2})
    assert stat.S_IMODE(store.path_of(key).stat().st_mode) == 0o600
    assert leftover_temp_files(tmp_path) == []


def test_keys_must_be_hex(tmp_path):
    with pytest.raises(ValueError):
        KernelStore(tmp_path).get("../../etc/passwd")


def test_a_failed_write_leaves_no_temp_file_and_the_old_entry(tmp_path, monkeypatch):
    store = KernelStore(tmp_path)
    key = key_of(PARTS)
    store.put(key, b"old", {}, parts=PARTS)

    def crash(*args):
        raise OSError(5, "disk fell off")

    monkeypatch.setattr(store_module.os, "replace", crash)
    assert store.put(key, b"new", {}, parts=PARTS) is False  # warned, not raised: a cache
    monkeypatch.undo()
    assert store.get(key) == (b"old", {})
    assert leftover_temp_files(tmp_path) == []


def _write_alternating_entries(root: str, key: str, rounds: int, size: int) -> None:
    store = KernelStore(root)
    for i in range(rounds):
        letter = b"ab"[i % 2 : i % 2 + 1]
        store.put(key, letter * size, {"letter": letter.decode(), "size": size}, parts=PARTS)


def test_readers_never_see_a_partial_entry(tmp_path, caplog):
    """One process rewrites a 4 MB entry over and over; a reader only ever sees whole entries."""
    key, size = key_of(PARTS), 4 << 20
    writer = multiprocessing.get_context("fork").Process(
        target=_write_alternating_entries, args=(str(tmp_path), key, 40, size))
    store = KernelStore(tmp_path)
    seen = {"a": 0, "b": 0}
    with caplog.at_level(logging.WARNING, logger=STORE_LOGGER):
        writer.start()
        while writer.is_alive():
            entry = store.get(key)
            if entry is None:
                assert not any(seen.values()), "an entry vanished after it was written"
                continue
            payload, meta = entry
            assert payload == meta["letter"].encode() * size
            seen[meta["letter"]] += 1
        writer.join()
    assert writer.exitcode == 0
    assert seen["a"] + seen["b"] > 0
    assert not [r for r in caplog.records if "corrupt" in r.getMessage()]
    assert leftover_temp_files(tmp_path) == []


def _corrupt_truncate(data: bytes) -> bytes:
    return data[: len(data) - 7]


def _corrupt_flip_payload_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


def _corrupt_flip_meta_byte(data: bytes) -> bytes:
    position = store_module._HEADER.size + 2
    return data[:position] + bytes([data[position] ^ 0x20]) + data[position + 1:]


def _corrupt_garbage(data: bytes) -> bytes:
    return os.urandom(len(data))


def _corrupt_header_only(data: bytes) -> bytes:
    return data[:10]


def _corrupt_empty(data: bytes) -> bytes:
    return b""


def _corrupt_bad_json_with_good_checksum(data: bytes) -> bytes:
    # A well-formed entry whose meta is not JSON: only the JSON parse can catch it.
    import hashlib

    meta, payload = b"{not json", b"cubin"  # (the envelope)
    header = store_module._HEADER.pack(store_module._MAGIC, store_module._FORMAT_VERSION,
                                       len(meta), len(payload),
                                       hashlib.sha256(meta + payload).digest())
    return header + meta + payload


@pytest.mark.parametrize("corrupt", [
    _corrupt_truncate, _corrupt_flip_payload_byte, _corrupt_flip_meta_byte, _corrupt_garbage,
    _corrupt_header_only, _corrupt_empty, _corrupt_bad_json_with_good_checksum,
], ids=lambda f: f.__name__.removeprefix("_corrupt_"))
def test_corrupt_entries_are_removed_and_rebuilt(tmp_path, caplog, corrupt):
    store = KernelStore(tmp_path)
    builds = []

    def build():
        builds.append(1)
        return b"\x7fELF cubin bytes", {"name": "k", "registers": 168}

    first = get_or_build(PARTS, build, store=store)
    path = store.path_of(key_of(PARTS))
    valid_entry = path.read_bytes()
    path.write_bytes(corrupt(valid_entry))

    with caplog.at_level(logging.WARNING, logger=STORE_LOGGER):
        assert store.get(key_of(PARTS)) is None  # detected and reported as a miss ...
    assert not path.exists()  # ... and removed
    assert any("corrupt" in r.getMessage() for r in caplog.records)

    path.write_bytes(corrupt(valid_entry))
    store_module.kernel_memory.clear()  # force the disk path
    assert get_or_build(PARTS, build, store=store) == first
    assert len(builds) == 2  # rebuilt once after the corruption
    assert store.get(key_of(PARTS)) == first  # and the rebuilt entry is valid


# ---------------------------------------------------------------------------------------------
# get_or_build
# ---------------------------------------------------------------------------------------------


def test_get_or_build_memory_then_disk_then_build(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return b"payload", {"name": "k", "shape": (2, 3)}

    store = KernelStore(tmp_path)
    built = get_or_build(PARTS, build, store=store)
    assert built == (b"payload", {"name": "k", "shape": [2, 3]})  # meta as JSON gives it back
    assert get_or_build(PARTS, build, store=store) is built  # memory hit: the same object
    store_module.kernel_memory.clear()
    assert get_or_build(PARTS, build, store=store) == built  # disk hit
    assert len(calls) == 1


def test_cache_dir_env_is_respected(tmp_path, monkeypatch):
    target = tmp_path / "elsewhere" / "nested"
    monkeypatch.setenv("PYFP8GEMM_CACHE_DIR", str(target))
    assert store_module.cache_dir() == target
    assert not target.exists()  # naming the cache dir creates nothing
    get_or_build(PARTS, lambda: (b"x", {}))
    assert (target / f"{key_of(PARTS)}.entry").is_file()
    assert stat.S_IMODE(target.stat().st_mode) == 0o700  # created private


def test_cache_dir_defaults_to_home_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("PYFP8GEMM_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert store_module.cache_dir() == tmp_path / "home" / ".cache" / "pyfp8gemm"


def test_disable_disk_cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PYFP8GEMM_DISABLE_DISK_CACHE", "1")
    calls = []
    get_or_build(PARTS, lambda: (calls.append(1) or b"x", {}))
    get_or_build(PARTS, lambda: (calls.append(1) or b"x", {}))
    assert len(calls) == 1  # the memory cache still works
    cache = tmp_path / "cache"
    assert not cache.exists() or not list(cache.iterdir())


def test_build_result_is_checked():
    with pytest.raises(TypeError):
        get_or_build(PARTS, lambda: b"only bytes")
    with pytest.raises(TypeError):
        get_or_build({**PARTS, "n": 2}, lambda: (b"x", {"bad": object()}))


def test_threads_build_once(tmp_path):
    calls = []

    def slow_build():
        calls.append(1)
        time.sleep(0.2)
        return b"threaded", {}

    results = []
    threads = [threading.Thread(target=lambda: results.append(
        get_or_build(PARTS, slow_build, store=KernelStore(tmp_path)))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert len(results) == 8 and all(r == (b"threaded", {}) for r in results)


def _build_counting(counter_path: str) -> tuple[bytes, dict]:
    """A slow build that records that it ran (one line per build) in ``counter_path``."""
    with open(counter_path, "a") as counter:
        counter.write(f"{os.getpid()}\n")
    time.sleep(0.5)  # wide enough that every process misses while the first one builds
    return b"\x7fELF" + b"cubin" * 1000, {"name": "fp8_gemm_concurrent", "pid_free": True}


def _compete_for_the_same_key(root: str, counter_path: str, barrier, results, use_locks: bool):
    if not use_locks:
        store_module.fcntl = None  # as on a file system without flock
    store_module.kernel_memory.clear()
    barrier.wait()
    payload, meta = get_or_build(PARTS, functools.partial(_build_counting, counter_path),
                                 store=KernelStore(root))
    results.put((payload, meta))


@pytest.mark.parametrize("use_locks", [True, False], ids=["flock", "no-locks"])
def test_concurrent_processes_end_with_one_valid_entry(tmp_path, use_locks):
    context = multiprocessing.get_context("fork")
    root, counter = tmp_path / "shared_cache", tmp_path / "builds.txt"
    barrier, results = context.Barrier(4), context.Queue()
    workers = [context.Process(target=_compete_for_the_same_key,
                               args=(str(root), str(counter), barrier, results, use_locks))
               for _ in range(4)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0

    builds = counter.read_text().splitlines()
    if use_locks:
        assert len(builds) == 1, builds  # one process built, the others waited and read it
    else:
        assert 1 <= len(builds) <= 4
    assert all(outcome == outcomes[0] for outcome in outcomes)
    entries = [p for p in root.iterdir() if p.name.endswith(".entry")]
    assert len(entries) == 1
    assert KernelStore(root).get(key_of(PARTS)) == outcomes[0]
    assert leftover_temp_files(root) == []


# ---------------------------------------------------------------------------------------------
# Memory hits never reach the disk (how fast they are is measured in the benchmarks, not here)
# ---------------------------------------------------------------------------------------------


def test_memory_hits_touch_neither_build_nor_disk(monkeypatch):
    first = get_or_build(PARTS, lambda: (b"x", {}))

    def no_disk(*args, **kwargs):
        raise AssertionError("a memory hit reached the disk")

    monkeypatch.setattr(store_module, "disk_store", no_disk)
    monkeypatch.setattr(KernelStore, "read", no_disk)
    assert get_or_build(PARTS, lambda: pytest.fail("rebuilt on a memory hit")) is first

    memo = MemoryCache()
    made = memo.get_or_create(("fp8_gemm_1d2d", 128), object)
    assert memo.get(("fp8_gemm_1d2d", 128)) is made
    assert memo.get_or_create(("fp8_gemm_1d2d", 128), lambda: pytest.fail("made twice")) is made
