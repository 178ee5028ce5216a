"""Portable archives of the kernel cache: `python -m pyfp8gemm cache export FILE` / `import FILE`.

An archive is a gzip'd tar holding ``manifest.json`` and ``entries/<key>.entry``: the cache's own
entry files, each of which records its full key parts (sources hash, tool versions, arch,
compiler options: what changes the cubin, never a path) and a sha256 of its content. The
manifest lists every entry with its key, kernel name, size and sha256, and the exporting
installation's toolchain. Members carry no owner, mode or time of the exporting machine.

Import verifies entry by entry: the member is listed in the manifest with the same sha256, the
entry decodes (checksum), its parts hash to its file name's key and its names agree. Anything
else is refused. A valid entry built for another installation (other tool versions, sources,
arch or compiler settings) could never be looked up here: it is skipped, and the summary says
what differs. The rest is written into the local cache (atomically, like a build).
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import store

__all__ = ["export_cache", "import_cache", "ExportResult", "ImportResult", "ArchiveError"]

FORMAT = "pyfp8gemm-kernel-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_ENTRY_MEMBER = re.compile(r"entries/([0-9a-f]{16,128})\.entry")
# Our kernels' entries are well under this; a larger member is not ours (or a zip bomb).
MAX_MEMBER_BYTES = 256 << 20


class ArchiveError(ValueError):
    """The file is not a pyfp8gemm cache archive (or not one this version reads)."""


@dataclass
class ExportResult:
    path: str
    entries: int
    bytes: int
    skipped: int            # entries left out (only_current: built for another installation)


@dataclass
class ImportResult:
    imported: int = 0
    already: int = 0                                                 # the cache had them
    skipped: list[tuple[str, str]] = field(default_factory=list)     # (kernel, what differs)
    refused: list[tuple[str, str]] = field(default_factory=list)     # (member, why)

    def __str__(self) -> str:
        lines = [f"imported {self.imported} kernels ({self.already} already cached, "
                 f"{len(self.skipped)} skipped, {len(self.refused)} refused)"]
        for reason, count in Counter(reason for _, reason in self.skipped).most_common():
            lines.append(f"  skipped {count}: built for another installation: {reason}")
        for member, reason in self.refused:
            lines.append(f"  refused {member}: {reason}")
        return "\n".join(lines)


def _local_store(root) -> store.KernelStore:
    if root is not None:
        return store.KernelStore(root)
    disk = None if store.disk_cache_disabled() else store.disk_store()
    if disk is None:
        raise RuntimeError(f"the disk cache is off here ({store.cache_dir()}: "
                           f"{store.describe_status()})")
    return disk


def _environment() -> dict:
    from .compiler import environment_parts

    return environment_parts()


def _difference(parts: dict, environment: dict) -> str | None:
    """What makes an entry's key unreachable here, in words; None if nothing does."""
    differences = []
    for name, here in environment.items():
        there = parts.get(name)
        if there == here:
            continue
        if name == "versions" and isinstance(there, dict):
            tools = [f"{tool} {there.get(tool)} (here {version})"
                     for tool, version in here.items() if there.get(tool) != version]
            differences.append("other toolchain versions: " + ", ".join(tools))
        elif name == "sources":
            differences.append("other pyfp8gemm sources (another version of pyfp8gemm)")
        else:
            differences.append(f"other {name}")
    return "; ".join(differences) or None


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def export_cache(file: str | os.PathLike, *, root: str | os.PathLike | None = None,
                 only_current: bool = False) -> ExportResult:
    """Write every valid entry of the cache (default ``disk_store()``; ``root``: that directory)
    into the archive ``file`` (written atomically). ``only_current``: only the entries built for
    this installation (the others could not be used by the same installation elsewhere)."""
    disk = _local_store(root)
    environment = _environment() if only_current else None
    entries, skipped = [], 0
    for key in disk.keys():
        entry = disk.read(key)      # verified (corrupt entries are removed, not exported)
        if entry is None:
            continue
        if environment is not None and _difference(entry.parts, environment):
            skipped += 1
            continue
        data = store.encode_entry(entry.payload, entry.meta, key=key, parts=entry.parts)
        entries.append((key, entry.name, data))
    from . import toolchain
    import pyfp8gemm

    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "pyfp8gemm": pyfp8gemm.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "toolchain": toolchain.versions(),
        "entries": [{"file": f"entries/{key}.entry", "key": key, "name": name,
                     "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                    for key, name, data in entries],
    }
    target = Path(file)
    descriptor, temp_name = tempfile.mkstemp(dir=target.parent or ".", prefix=".pyfp8gemm-export-",
                                             suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True).encode()
            tar.addfile(_tar_info(MANIFEST, len(manifest_bytes)), io.BytesIO(manifest_bytes))
            for key, _, data in entries:
                tar.addfile(_tar_info(f"entries/{key}.entry", len(data)), io.BytesIO(data))
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, target)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
    return ExportResult(str(target), len(entries), target.stat().st_size, skipped)


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:
        raise ArchiveError(f"{member.name}: not a regular file")
    with handle:
        return handle.read(MAX_MEMBER_BYTES + 1)


def import_cache(file: str | os.PathLike, *, root: str | os.PathLike | None = None
                 ) -> ImportResult:
    """Verify the archive ``file`` entry by entry and add what this installation can use to the
    cache (default ``disk_store()``; ``root``: that directory). Nothing is extracted to a path
    taken from the archive: entries are written by the store under their verified keys."""
    disk = _local_store(root)
    environment = _environment()
    result = ImportResult()
    try:
        tar = tarfile.open(file, mode="r:*")
    except (tarfile.TarError, OSError) as error:
        raise ArchiveError(f"{file}: not a readable tar archive ({error})") from error
    with tar:
        members = tar.getmembers()
        manifest_member = next((m for m in members if m.name == MANIFEST and m.isfile()), None)
        if manifest_member is None or manifest_member.size > MAX_MEMBER_BYTES:
            raise ArchiveError(f"{file}: no {MANIFEST}: not a pyfp8gemm cache archive")
        try:
            manifest = json.loads(_read_member(tar, manifest_member))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ArchiveError(f"{file}: {MANIFEST} is not JSON ({error})") from error
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ArchiveError(f"{file}: not a pyfp8gemm cache archive")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ArchiveError(f"{file}: archive format version {manifest.get('format_version')}"
                               f", this pyfp8gemm reads {FORMAT_VERSION}")
        listed = {item.get("file"): item for item in manifest.get("entries", [])
                  if isinstance(item, dict)}
        for member in members:
            if member is manifest_member:
                continue
            match = _ENTRY_MEMBER.fullmatch(member.name)
            if not member.isfile() or match is None:
                result.refused.append((member.name, "not an entry file of a cache archive"))
                continue
            if member.size > MAX_MEMBER_BYTES:
                result.refused.append((member.name, f"larger than {MAX_MEMBER_BYTES} bytes"))
                continue
            key = match.group(1)
            data = _read_member(tar, member)
            item = listed.get(member.name)
            if item is None:
                result.refused.append((member.name, "not listed in the manifest"))
                continue
            if item.get("sha256") != hashlib.sha256(data).hexdigest() or item.get("key") != key:
                result.refused.append((member.name, "its checksum or key differs from the "
                                                    "manifest's"))
                continue
            try:
                entry = store.decode_entry(data, key=key)
            except store.CorruptEntryError as error:
                result.refused.append((member.name, f"not a valid entry of its key: {error}"))
                continue
            difference = _difference(entry.parts, environment)
            if difference:
                result.skipped.append((entry.name or key, difference))
                continue
            if disk.read(key) is not None:
                result.already += 1
                continue
            if not disk.put(key, entry.payload, entry.meta, parts=entry.parts):
                raise RuntimeError(f"cannot write into the cache {disk.root} (see the warning)")
            result.imported += 1
    return result
