"""The store: every artefact the book computes once and keeps (trained models, the judge classifier,
expensive evaluations), keyed by what it means, and fetched from the published site before anything
is computed again.

    entry = store.get(config)                 # local, else published, else None
    entry = store.put(config, tensors, info)  # after training or computing

**Keys.** An entry is found by its ``config``: a JSON-able dict that says what the artefact *is*
(for a model: its canonical spec, training recipe, data subset, seed, the dataset's checksum and the
explicit version numbers of the code that shapes it; see ``train.model_config``). The key is 16 hex
digits of the SHA-256 of the config's canonical JSON. No source file's bytes enter a key: a comment,
a docstring or a refactor changes none; a change of meaning bumps a version number (a golden-weights
test per model class catches a forgotten bump).

**Entries.** ``<key>.pt`` holds ``{"format", "config", "tensors", "info", "meta", "checksum"}``
(``torch.load(weights_only=True)`` reads it); ``tensors`` are the weights or results, ``info`` is
JSON-able (a training history), ``meta`` says where and how it was made (torch version, device,
date: metadata, never part of the key) and ``checksum`` covers tensors and info. ``<key>.json``
beside it describes the entry for :func:`info` without loading it. Every file the package writes
goes through :func:`atomic_path`, so no reader ever sees half a file.

**Published entries.** The full build exports every entry the book used into the site
(``<site>/models/<key>.pt`` and ``manifest.json`` with each file's size and SHA-256). :func:`get`
fetches a missing entry from there, with the hash checked by torch.hub's downloader, before anything
trains. The address: ``$LATENTBOOK_MODELS_URL``, else ``latentbook.models_url`` in the ``_config.yml``
of the checkout being run in. A placeholder address (a reserved ``example`` domain, RFC 2606) or none
fetches nothing.

The folder: ``folder``, else ``$LATENTBOOK_MODELS``, else the user cache folder
(``platformdirs.user_cache_dir("latentbook")/models``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import socket
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import platformdirs
import torch
from torch import Tensor

__all__ = [
    "FORMAT", "Entry", "StoreInfo", "folder", "canonical", "key_of", "checksum", "file_sha256",
    "atomic_path", "write_bytes", "write_text", "get", "put", "info", "clear", "used",
    "models_url", "manifest", "fetch_all", "is_placeholder", "MANIFEST",
]

FORMAT = 2  # the layout of an entry file; format 1 (before the store) keyed models by source bytes
MANIFEST = "manifest.json"
FETCH_TIMEOUT_S = 30  # per socket operation: a dead server must not hang a chapter
_KEY_RE = re.compile(r"^[0-9a-f]{16}$")
_PLACEHOLDER_HOSTS = ("example.com", "example.net", "example.org")  # RFC 2606, with the TLDs below
_PLACEHOLDER_TLDS = (".example", ".invalid", ".test", ".localhost")

# Entries this process read or wrote: key -> checksum. A chapter's dependency record (build.py).
_USED: dict[str, str] = {}


# ---------------------------------------------------------------------------------------------
# Files: the one atomic write, checksums
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success flush it to disk and move it into place,
    on any error (or Ctrl-C) delete it. Readers see the old file or the whole new one, never a part."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # A unique name per writer: two processes writing one entry never share a temporary file.
    # The suffix is kept (``.x.ipynb`` -> ``.x.<pid>.<random>.tmp.ipynb``) for writers that look at it.
    tmp = final.parent / f".{final.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp{final.suffix}"
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def lock(path: str | os.PathLike, *, waiting: str | None = None, log=None) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if missing) until the block ends; the
    operating system releases it when the process dies, so a killed holder never blocks anyone.
    When another process holds it, ``log(waiting.format(holder=...))`` is called once before waiting.
    POSIX only; elsewhere no lock is taken (every write is still atomic)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting and log:
                f.seek(0)
                log(waiting.format(holder=f.read().strip() or "another process"))
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            f.truncate(0)
            f.write(f"pid {os.getpid()}")
            f.flush()
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        with open(tmp, "xb") as f:
            f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode())


def checksum(tensors: dict[str, Tensor], info: dict[str, Any] | None = None) -> str:
    """SHA-256 over named tensors (name, dtype, shape, bytes) and, when given, the canonical JSON of ``info``."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    if info is not None:
        h.update(json.dumps(info, sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------


def folder(path: str | os.PathLike | None = None) -> Path:
    """The store folder: ``path``, else ``$LATENTBOOK_MODELS``, else the user cache folder."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get("LATENTBOOK_MODELS", "").strip()
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("latentbook")) / "models"


def canonical(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` after a JSON round trip (tuples become lists, so equal configs compare equal)."""
    try:
        return json.loads(json.dumps(config, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"a store configuration must be JSON-able (numbers, strings, lists, dicts): {exc}") from None


def key_of(config: dict[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the canonical JSON of ``config``."""
    blob = json.dumps(canonical(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Entries
# ---------------------------------------------------------------------------------------------


@dataclass
class Entry:
    """One stored artefact. tensors: weights or results (on the CPU); info: JSON-able (a history)."""

    key: str
    config: dict[str, Any]
    tensors: dict[str, Tensor]
    info: dict[str, Any]
    meta: dict[str, Any]
    checksum: str


def _describe(config: dict[str, Any]) -> str:
    """A short human description of a config, e.g. ``vae(latent_dim=2, ...) on mnist n=all, 15 epochs``."""
    if config.get("about"):
        return str(config["about"])
    spec = dict(config.get("spec") or {})
    what = f"{spec.pop('arch', config.get('kind', 'entry'))}({', '.join(f'{k}={v}' for k, v in spec.items())})"
    data, recipe = config.get("data") or {}, dict(config.get("recipe") or {})
    if data:
        what += f" on {data.get('dataset')} n={data.get('n') or 'all'}"
        if data.get("exclude_classes"):
            what += f" without {data['exclude_classes']}"
    if recipe:
        what += f", {recipe.pop('epochs', '?')} epochs"
        what += "".join(f", {k}={v}" for k, v in recipe.items() if v not in (None, {}, 0, 0.0) and k not in ("lr", "batch_size"))
    return what


def _read(path: Path, config: dict[str, Any] | None) -> Entry | str:
    """The verified entry at ``path``, or a one-line reason why it cannot be used."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, garbage bytes, unpickling refused...
        first = str(exc).splitlines()[0][:120] if str(exc) else ""
        return f"unreadable ({type(exc).__name__}: {first})"
    if not isinstance(raw, dict):
        return "not a latentbook store entry"
    if raw.get("format") != FORMAT:
        return f"written by another version of latentbook (entry format {raw.get('format', 1)}, this one reads {FORMAT})"
    if not {"config", "tensors", "info", "meta", "checksum"} <= set(raw):
        return "not a latentbook store entry"
    if config is not None and raw["config"] != config:
        return "its stored configuration does not match its key"
    if checksum(raw["tensors"], raw["info"]) != raw["checksum"]:
        return "checksum mismatch (the file was changed or damaged)"
    return Entry(path.stem, raw["config"], raw["tensors"], raw["info"], raw["meta"], raw["checksum"])


def get(config: dict[str, Any], *, folder_: str | os.PathLike | None = None, fetch: bool = True,
        log=None) -> Entry | None:
    """The entry for ``config``: from the store folder, else fetched from the published site (hash
    checked), else None (the caller computes it and calls :func:`put`).

    An unusable local or fetched entry is reported in one line (a warning) and treated as missing.
    ``log``: where the one-line reports of fetching go (default: printed to stderr).
    """
    config = canonical(config)
    key = key_of(config)
    path = folder(folder_) / f"{key}.pt"
    if path.exists():
        found = _read(path, config)
        if isinstance(found, Entry):
            _USED[key] = found.checksum
            return found
        warnings.warn(f"latentbook: stored {_describe(config)} ({path}) is unusable: {found}; making it again",
                      RuntimeWarning, stacklevel=3)
    if fetch:
        found = _fetch(key, config, path, log=log or _stderr)
        if found is not None:
            _USED[key] = found.checksum
            return found
    return None


def put(config: dict[str, Any], tensors: dict[str, Tensor], info: dict[str, Any] | None = None, *,
        meta: dict[str, Any] | None = None, folder_: str | os.PathLike | None = None) -> Entry:
    """Store ``tensors`` (and JSON-able ``info``) under ``config``'s key; return the entry.

    The write is atomic. If it fails (a full or read-only disk), the entry is still returned, with
    a warning: losing the store costs time, never the result.
    """
    config = canonical(config)
    key = key_of(config)
    tensors = {k: v.detach().cpu().clone() for k, v in tensors.items()}
    info = canonical(info or {})
    meta = {"torch": str(torch.__version__), "python": sys.version.split()[0],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **(meta or {})}
    entry = Entry(key, config, tensors, info, meta, checksum(tensors, info))
    path = folder(folder_) / f"{key}.pt"
    try:
        with lock(path.parent / ".lock"):  # two writers of one entry: the .pt and its .json come from the same one
            with atomic_path(path) as tmp:
                torch.save({"format": FORMAT, "config": config, "tensors": tensors, "info": info, "meta": meta,
                            "checksum": entry.checksum}, tmp)
            _write_description(path, entry)
    except OSError as exc:
        warnings.warn(f"latentbook: could not store {_describe(config)} at {path} ({exc}); it is not kept",
                      RuntimeWarning, stacklevel=3)
    _USED[key] = entry.checksum
    return entry


def _write_description(path: Path, entry: Entry, source: str = "made here") -> None:
    description = {"key": entry.key, "format": FORMAT, "config": entry.config, "meta": entry.meta,
                   "checksum": entry.checksum, "bytes": path.stat().st_size, "source": source}
    write_text(path.with_suffix(".json"), json.dumps(description, indent=1, sort_keys=True))


def used() -> dict[str, str]:
    """The entries this process read or wrote so far: ``{key: checksum}``."""
    return dict(_USED)


# ---------------------------------------------------------------------------------------------
# Listing and clearing (python -m latentbook cache info|clear)
# ---------------------------------------------------------------------------------------------


@dataclass
class StoreInfo:
    """What a store folder holds: one description dict per entry (``key``, ``config``, ``bytes``, ...)."""

    folder: Path
    entries: list[dict[str, Any]] = field(default_factory=list)
    removed: bool = False  # True when this lists what clear() deleted

    @property
    def total_bytes(self) -> int:
        return sum(e.get("bytes", 0) for e in self.entries)

    def __str__(self) -> str:
        size = f"{self.total_bytes / 1e6:.1f} MB"
        n = len(self.entries)
        head = (f"removed {n} stored entr{'y' if n == 1 else 'ies'}, {size}, from {self.folder}" if self.removed
                else f"{n} stored entr{'y' if n == 1 else 'ies'}, {size}, in {self.folder}")
        lines = [head]
        for e in self.entries:
            c = e.get("config") or {}
            what = _describe(c) if c else "(no description)"
            old = "" if e.get("format") == FORMAT else f"  [format {e.get('format', 1)}: unused by this version]"
            lines.append(f"  {e['key']}  {e.get('bytes', 0) / 1e6:6.1f} MB  {c.get('kind', '?'):<10}  {what}{old}")
        return "\n".join(lines)


def info(folder_: str | os.PathLike | None = None) -> StoreInfo:
    """What the store holds, read from the ``.json`` descriptions (nothing is loaded)."""
    where = folder(folder_)
    entries = []
    for pt in sorted(where.glob("*.pt")) if where.is_dir() else []:
        if not _KEY_RE.match(pt.stem):
            continue
        try:
            description = json.loads(pt.with_suffix(".json").read_text())
        except (OSError, ValueError):
            description = {}
        description.update(key=pt.stem, bytes=pt.stat().st_size)
        entries.append(description)
    return StoreInfo(where, entries)


def clear(folder_: str | os.PathLike | None = None) -> StoreInfo:
    """Delete every entry (and temporary files left by an interrupted write); other files are kept."""
    listed = info(folder_)
    if listed.folder.is_dir():
        for p in listed.folder.iterdir():
            ours = _KEY_RE.match(p.stem) and p.suffix in (".pt", ".json")
            leftover = p.name.startswith(".") and ".tmp" in p.name and _KEY_RE.match(p.name[1:17])
            if p.is_file() and (ours or leftover):
                p.unlink(missing_ok=True)
    listed.removed = True
    return listed


# ---------------------------------------------------------------------------------------------
# Published entries: the manifest the build writes, and fetching from it
# ---------------------------------------------------------------------------------------------


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _config_file_url() -> str:
    """``latentbook.models_url`` from the ``_config.yml`` of the checkout around the working folder."""
    here = Path.cwd().resolve()
    for where in (here, *here.parents):
        cfg = where / "_config.yml"
        if cfg.is_file() and (where / "_toc.yml").is_file():
            try:
                import yaml
            except ImportError:
                return ""
            try:
                data = yaml.safe_load(cfg.read_text()) or {}
            except (OSError, yaml.YAMLError):
                return ""
            return str((data.get("latentbook") or {}).get("models_url") or "")
    return ""


def is_placeholder(url: str) -> bool:
    """True for an address on a domain reserved for examples (RFC 2606): it is never fetched from."""
    host = (urlparse(url).hostname or "").lower()
    return (host in _PLACEHOLDER_HOSTS or host.endswith(tuple("." + h for h in _PLACEHOLDER_HOSTS))
            or host.endswith(_PLACEHOLDER_TLDS))


def models_url() -> str | None:
    """Where published entries are fetched from (ends with ``/``), or None when nothing is to be fetched."""
    url = os.environ.get("LATENTBOOK_MODELS_URL", "").strip() or _config_file_url().strip()
    if not url or url.lower() in ("none", "off", "0") or is_placeholder(url):
        return None
    if urlparse(url).scheme not in ("http", "https", "file"):
        raise ValueError(f"the published models address must be an http(s) or file URL, got {url!r}")
    return url if url.endswith("/") else url + "/"


_MANIFESTS: dict[str, dict[str, Any] | str] = {}  # url -> manifest, or the reason it could not be had


def _download(url: str, dest: Path, sha256: str | None) -> None:
    """``url`` into ``dest`` with torch.hub's downloader: written to a temporary file, its SHA-256
    checked against ``sha256`` (when given), then moved into place; a mismatch leaves nothing."""
    from torch.hub import download_url_to_file

    previous = socket.getdefaulttimeout()
    # urllib has no timeout of its own: without one a dead server hangs the chapter.
    socket.setdefaulttimeout(FETCH_TIMEOUT_S if previous is None else previous)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        download_url_to_file(url, str(dest), hash_prefix=sha256, progress=False)
    finally:
        socket.setdefaulttimeout(previous)


def manifest(url: str | None = None) -> dict[str, Any] | str:
    """The published manifest at ``url`` (default :func:`models_url`), or why it cannot be had."""
    url = url or models_url()
    if url is None:
        return "no published address is configured"
    if url not in _MANIFESTS:
        with tempfile.TemporaryDirectory(prefix="latentbook-manifest-") as tmp:
            try:
                _download(url + MANIFEST, Path(tmp) / MANIFEST, None)
                found = json.loads((Path(tmp) / MANIFEST).read_text())
                if not isinstance(found, dict) or not isinstance(found.get("entries"), dict):
                    raise ValueError("not a latentbook manifest")
                _MANIFESTS[url] = found
            except Exception as exc:  # offline, 404, a page that is not JSON...
                _MANIFESTS[url] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    return _MANIFESTS[url]


def _fetch(key: str, config: dict[str, Any], path: Path, *, log) -> Entry | None:
    """The published entry ``key``, downloaded into ``path`` and verified; None (and one line saying
    why, when an address is configured) if it cannot be had."""
    url = models_url()
    if url is None:
        return None
    what = _describe(config)
    found = manifest(url)
    if isinstance(found, str):
        log(f"latentbook: no published weights for {what} (cannot read {url}{MANIFEST}: {found}); computing it here")
        return None
    listed = found["entries"].get(key)
    if listed is None:
        other = found.get("format")
        why = (f"they were published by an older latentbook (entry format {other})" if other != FORMAT
               else "the published book did not use this configuration")
        log(f"latentbook: no published weights for {what} at {url} ({why}); computing it here")
        return None
    try:
        _download(url + f"{key}.pt", path, listed["sha256"])
    except Exception as exc:  # offline, 404, truncated, wrong hash: nothing was written to path
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        log(f"latentbook: could not fetch {what} from {url} ({first}); computing it here")
        return None
    entry = _read(path, config)
    if isinstance(entry, str):
        path.unlink(missing_ok=True)
        log(f"latentbook: the published {what} from {url} is unusable ({entry}); computing it here")
        return None
    with contextlib.suppress(OSError):
        _write_description(path, entry, source=f"fetched from {url}")
    return entry


def fetch_all(url: str | None = None, *, folder_: str | os.PathLike | None = None, log=_stderr) -> int:
    """Fetch every entry the published manifest lists that the store lacks (hash checked); return how
    many listed entries are now in the store. An instructor's warm-up: no training, no computing."""
    url = url or models_url()
    listed = manifest(url) if url else "no published address is configured"
    if isinstance(listed, str):
        log(f"latentbook: nothing fetched ({listed})")
        return 0
    ready = 0
    where = folder(folder_)
    for key, item in sorted(listed["entries"].items()):
        config = item.get("config")
        if not _KEY_RE.match(key) or not isinstance(config, dict) or key_of(config) != key:
            log(f"latentbook: the manifest at {url} lists {key!r} without a matching configuration; skipped")
            continue
        path = where / f"{key}.pt"
        if path.exists() and isinstance(_read(path, config), Entry):
            ready += 1
        elif _fetch(key, config, path, log=log) is not None:
            ready += 1
    return ready
