"""The prepared-data cache: tokenised datasets as Arrow files, keyed by everything that changes them.

    <cache>/<key>/*-encoded-*.arrow         the map's output: tokens, labels and per-row facts, memory-mapped
    <cache>/<key>/rows.json                 which of those files and rows are the training / validation rows
    <cache>/<key>/report.json               the DataReport, eval examples and chat template of the pass
    <cache>/<key>/meta.json                 what the key covers, in words (`tunebench cache ls`)
    <cache>/<key>/last_used                 touched on every hit
    <cache>/fingerprints.json               path + size + mtime → content hash, so a file is hashed once
    <cache>/<key>.lock                      held while the entry is built: one builder, the others wait

The key hashes the data files' contents, every data.* setting that shapes the rows, the tokenizer
(its serialised vocabulary, merges, normalisers and special tokens), the resolved chat template and
PIPELINE_VERSION. It holds nothing else, so a change of learning rate, or a touched file whose content
is the same, hits the cache. An entry is built in a temporary folder and renamed into place whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from presets.schema import DataConfig

# Raise when a change to the pipeline changes the rows or the report it writes: old entries then miss.
PIPELINE_VERSION = 2  # 2: the map's files are the rows (rows.json), no copy of them
FINGERPRINTS = "fingerprints.json"
# data.* keys that do not change the prepared rows (they act later, or are set on the loaded report).
_NOT_IN_KEY = {"packing", "streaming"}


def cache_dir_for(folder: Path) -> Path | None:
    """The workspace's cache for a folder inside a run (<workspace>/runs/<id>/…); None outside a
    workspace (the data is then prepared into a temporary folder)."""
    folder = Path(folder).resolve()
    for path in (folder, *folder.parents):
        if path.parent.name == "runs":
            return path.parent.parent / "cache"
    return None


# --------------------------------------------------------------------------- fingerprints


def _data_files(spec: str) -> list[Path] | None:
    from engine.data.loading import LOCAL_SUFFIXES

    path = Path(spec).expanduser()
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in LOCAL_SUFFIXES)
    if path.exists():
        return [path]
    return None  # a hub id: keyed by its name


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Fingerprints:
    """Content hashes of data files, recomputed only when a file's size or mtime changed."""

    def __init__(self, cache_dir: Path):
        self.path = cache_dir / FINGERPRINTS
        try:
            self.known: dict = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.known = {}
        self.changed = False

    def of(self, path: Path) -> str:
        stat = path.stat()
        name = str(path.resolve())
        seen = self.known.get(name)
        if seen and seen["size"] == stat.st_size and seen["mtime_ns"] == stat.st_mtime_ns:
            return seen["sha256"]
        digest = _file_hash(path)
        self.known[name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        self.changed = True
        return digest

    def save(self) -> None:
        if self.changed:
            _write_atomic(self.path, json.dumps(self.known, indent=1))


def _sources(files: list[str], fingerprints: Fingerprints | None) -> list:
    out = []
    for spec in files:
        paths = _data_files(spec)
        if paths is None:
            out.append({"hub": spec})
        else:
            # The path too: the report and the rows' places (file:line) name it.
            out.append([{"path": str(p.resolve()), "sha256": fingerprints.of(p) if fingerprints else _file_hash(p)} for p in paths])
    return out


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what the tokenizer does: its serialised pipeline (fast tokenizers) or vocabulary."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    special = {k: str(v) for k, v in getattr(tokenizer, "special_tokens_map", {}).items()}
    digest.update(json.dumps(special, sort_keys=True).encode())
    digest.update(str(getattr(tokenizer, "chat_template", None)).encode())
    return digest.hexdigest()


def _template_text(tokenizer, data: DataConfig) -> str:
    from engine.data.render import template_for

    try:
        return template_for(tokenizer, data.chat_template).text
    except Exception:  # a bad template name: the pipeline raises it with advice
        return str(data.chat_template)


@dataclass(frozen=True)
class CacheKey:
    key: str
    summary: dict  # what it covers, in words, for `tunebench cache ls`


def cache_key(data: DataConfig, tokenizer, *, seed: int, fingerprints: Fingerprints | None = None) -> CacheKey:
    settings = data.model_dump(mode="json", exclude={"train_files", "val_files", *_NOT_IN_KEY})
    parts = {
        "pipeline": PIPELINE_VERSION,
        "train": _sources(data.train_files, fingerprints),
        "val": _sources(data.val_files, fingerprints),
        "data": settings,
        "seed": seed,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "template": hashlib.sha256(_template_text(tokenizer, data).encode()).hexdigest(),
    }
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]
    summary = {
        "files": list(data.train_files), "val_files": list(data.val_files), "format": data.format,
        "tokenizer": getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__,
        "max_length": data.max_length, "val_ratio": data.val_ratio, "seed": seed,
    }
    return CacheKey(key, summary)


# --------------------------------------------------------------------------- entries


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def build_lock(cache_dir: Path, key: str):
    """Held while one process builds the entry; the others block here, then find it built."""
    import fcntl

    made = not cache_dir.exists()
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = cache_dir / f"{key}.lock"
    with open(lock, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        except BaseException:
            # A refused build leaves nothing behind (a waiter then builds, and fails, on its own).
            lock.unlink(missing_ok=True)
            if made:
                with contextlib.suppress(OSError):
                    cache_dir.rmdir()
            raise
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def entry_dir(cache_dir: Path, key: str) -> Path:
    return cache_dir / key


def is_complete(entry: Path) -> bool:
    return (entry / "meta.json").is_file()


def new_build_dir(cache_dir: Path, key: str) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    build = cache_dir / f".build-{key}-{os.getpid()}"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(mode=0o700)
    return build


def publish(build: Path, entry: Path) -> None:
    """Rename the finished build into place (a complete entry already there wins)."""
    if is_complete(entry):
        shutil.rmtree(build, ignore_errors=True)
        return
    shutil.rmtree(entry, ignore_errors=True)  # an incomplete leftover
    os.replace(build, entry)


def touch(entry: Path) -> None:
    (entry / "last_used").write_text(str(time.time()))


@dataclass
class CacheEntry:
    key: str
    path: Path
    summary: dict
    rows: int
    eval_rows: int
    size: int
    created: float
    last_used: float


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def list_entries(cache_dir: Path) -> list[CacheEntry]:
    """The complete entries, most recently used first."""
    out = []
    if not cache_dir.is_dir():
        return out
    for entry in cache_dir.iterdir():
        if not entry.is_dir() or entry.name.startswith(".") or not is_complete(entry):
            continue
        try:
            meta = json.loads((entry / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        used = entry / "last_used"
        last = used.stat().st_mtime if used.exists() else meta.get("created", 0.0)
        out.append(CacheEntry(entry.name, entry, meta.get("summary", {}), meta.get("rows", 0), meta.get("eval_rows", 0),
                              _size(entry), meta.get("created", 0.0), last))
    return sorted(out, key=lambda e: -e.last_used)


def clear(cache_dir: Path, key: str | None = None) -> list[str]:
    """Delete one entry (a key or a unique prefix of one) or all; the keys deleted. KeyError: no such entry."""
    entries = list_entries(cache_dir)
    chosen = entries if key is None else [e for e in entries if e.key.startswith(key)]
    if key is not None and len(chosen) != 1:
        raise KeyError(key if not chosen else f"{key} matches {len(chosen)} entries")
    for entry in chosen:
        shutil.rmtree(entry.path, ignore_errors=True)
        (cache_dir / f"{entry.key}.lock").unlink(missing_ok=True)
    if key is None and cache_dir.is_dir():  # leftovers of interrupted builds, and the hashes
        for leftover in cache_dir.glob(".build-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        (cache_dir / FINGERPRINTS).unlink(missing_ok=True)
    return [e.key for e in chosen]
