"""Datasets: digits split, IDX reading, checksums, search order, and a real HTTP download."""

import contextlib
import functools
import gzip
import hashlib
import http.server
import os
import pathlib
import threading

import numpy as np
import pytest

import ctgep
from ctgep._experiment import data as _data
from ctgep._experiment.data import DataError, FILES, load_dataset, read_idx, write_idx


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No user cache, no environment variable: each test says where the data is."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CTGEP_DATA_DIR", raising=False)


def _fake_mnist(folder: pathlib.Path, n_train=30, n_test=12, seed=0):
    """The four IDX files of a tiny MNIST-like set; returns (arrays, md5 table)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    sums = {}
    for key, stem in FILES.items():
        path = folder / (stem + ".gz")
        write_idx(path, arrays[key])
        sums[path.name] = (hashlib.md5(path.read_bytes()).hexdigest(),)
    return arrays, sums


def test_digits_fixed_split_scaled_and_stratified():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=5)
    assert a.x_train.dtype == np.float32 and a.x_train.shape[1] == 64 == a.n_features
    assert 0.0 <= a.x_train.min() and a.x_train.max() == 1.0
    assert len(a.y_train) + len(a.y_test) == 1797
    np.testing.assert_array_equal(a.x_test, b.x_test)  # the split does not depend on the seed
    counts = np.bincount(a.y_test, minlength=10)
    assert counts.min() >= 0.8 * counts.max()
    train_rows = {r.tobytes() for r in a.x_train}
    assert sum(r.tobytes() in train_rows for r in a.x_test) < 5  # (digits has a few duplicates)


def test_validation_split_is_carved_from_training():
    full = load_dataset("digits")
    v = load_dataset("digits", validation=0.2, seed=3)
    assert len(v.y_val) == round(0.2 * len(full.y_train))
    assert len(v.y_val) + len(v.y_train) == len(full.y_train)
    assert sorted(np.concatenate([v.y_val, v.y_train])) == sorted(full.y_train)
    np.testing.assert_array_equal(v.x_val, load_dataset("digits", validation=0.2, seed=3).x_val)
    with pytest.raises(DataError, match="validation"):
        load_dataset("digits", validation=1.5)


def test_unknown_dataset():
    with pytest.raises(DataError, match="dataset='cifar10' is unknown"):
        load_dataset("cifar10")


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip_and_corruption(tmp_path, gz):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, a)
    np.testing.assert_array_equal(read_idx(path), a)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 7])
    with pytest.raises(DataError, match="truncated|corrupted"):
        read_idx(path)
    path.write_bytes((b"\x00\x00\x0d\x03" + raw[4:]) if not gz else b"not gzip at all")
    with pytest.raises(DataError, match=str(path.name)):
        read_idx(path)


def test_mnist_from_data_dir_env_and_checksums(tmp_path, monkeypatch):
    arrays, sums = _fake_mnist(tmp_path / "root" / "mnist")
    monkeypatch.setitem(_data.CHECKSUMS, "mnist", sums)
    d = load_dataset("mnist", data_dir=tmp_path / "root", download=False)  # <dir>/mnist/ layout
    np.testing.assert_allclose(d.x_train, arrays["train_images"].reshape(30, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(d.y_test, arrays["test_labels"])
    monkeypatch.setenv("CTGEP_DATA_DIR", str(tmp_path / "root" / "mnist"))
    assert load_dataset("mnist", download=False).source == str(tmp_path / "root" / "mnist")
    # A file whose digest is unknown is refused, unless verification is switched off.
    monkeypatch.setitem(_data.CHECKSUMS, "mnist", dict(sums, **{"t10k-labels-idx1-ubyte.gz": ("0" * 32,)}))
    with pytest.raises(DataError, match="md5"):
        load_dataset("mnist", download=False)
    assert len(load_dataset("mnist", download=False, verify=False).y_test) == 12


def test_both_mnist_training_image_digests_are_accepted():
    accepted = _data.CHECKSUMS["mnist"]["train-images-idx3-ubyte.gz"]
    assert "f68b3c2dcbeaaa9fbdd348bbdeb94873" in accepted and "a0800b9e8c812b9e45b911451b965316" in accepted


def _recompress(path: pathlib.Path, payload: bytes | None = None) -> None:
    """Rewrite the gzip file `path` with other compressed bytes (level 1, another mtime), and
    with `payload` as its content if given: what a repackager does to the official files."""
    if payload is None:
        with gzip.open(path, "rb") as f:
            payload = f.read()
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=12345) as f:
        f.write(payload)


def _payload_table(folder: pathlib.Path) -> dict:
    out = {}
    for stem in FILES.values():
        with gzip.open(folder / (stem + ".gz"), "rb") as f:
            out[stem] = (hashlib.sha256(f.read()).hexdigest(),)
    return out


def test_recompressed_files_are_verified_by_their_payload(tmp_path, monkeypatch):
    # Debian's dataset-fashion-mnist ships the official payloads recompressed: the .gz md5s
    # differ from the published ones, the decompressed IDX content does not.
    folder = tmp_path / "fashion-mnist"
    arrays, sums = _fake_mnist(folder)
    payloads = _payload_table(folder)
    for stem in FILES.values():
        _recompress(folder / (stem + ".gz"))
    monkeypatch.setitem(_data.CHECKSUMS, "fashion-mnist", sums)  # the "official" .gz digests
    monkeypatch.setitem(_data.PAYLOAD_SHA256, "fashion-mnist", payloads)
    d = load_dataset("fashion-mnist", data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(d.y_train, arrays["train_labels"])
    np.testing.assert_allclose(d.x_test, arrays["test_images"].reshape(12, -1) / 255.0, rtol=1e-6)
    # Without a known payload digest the recompressed file is refused, naming both digests.
    monkeypatch.setitem(_data.PAYLOAD_SHA256, "fashion-mnist", {})
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz .*md5 .*sha256 [0-9a-f]{64}.*corrupted"):
        load_dataset("fashion-mnist", data_dir=tmp_path, download=False)


def test_a_file_whose_payload_really_differs_is_corrupted(tmp_path, monkeypatch):
    folder = tmp_path / "fashion-mnist"
    arrays, sums = _fake_mnist(folder)
    monkeypatch.setitem(_data.CHECKSUMS, "fashion-mnist", sums)
    monkeypatch.setitem(_data.PAYLOAD_SHA256, "fashion-mnist", _payload_table(folder))
    assert len(load_dataset("fashion-mnist", data_dir=tmp_path, download=False).y_train) == 30
    # One pixel changed, a well-formed IDX file: neither digest matches.
    images = arrays["train_images"].copy()
    images[3, 10, 10] ^= 1
    write_idx(folder / "train-images-idx3-ubyte.gz", images)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz .*none of the known .*corrupted"):
        load_dataset("fashion-mnist", data_dir=tmp_path, download=False)
    # Not gzip at all.
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"not a gzip file" * 10)
    with pytest.raises(DataError, match="does not decompress"):
        load_dataset("fashion-mnist", data_dir=tmp_path, download=False)
    with pytest.raises(DataError, match="cannot be read as gzip"):
        load_dataset("fashion-mnist", data_dir=tmp_path, download=False, verify=False)


def test_both_mnist_training_image_versions_have_a_digest():
    # The official file by its published .gz md5; the lossy reconstruction also by its payload.
    payloads = _data.PAYLOAD_SHA256["mnist"]["train-images-idx3-ubyte"]
    assert "374ba378bee06c633f4800ac6a495f71d1b80b0e82bf763acbfa4c7e9c379f75" in payloads
    for name in ("mnist", "fashion-mnist"):
        assert set(_data.PAYLOAD_SHA256[name]) == set(FILES.values())
        assert all(len(d) == 64 for ds in _data.PAYLOAD_SHA256[name].values() for d in ds)


_DEBIAN_FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (_DEBIAN_FASHION / "train-images-idx3-ubyte.gz").is_file(),
                    reason="apt-get install dataset-fashion-mnist to run")
def test_debians_fashion_mnist_files_are_accepted():
    d = load_dataset("fashion-mnist", search_path=[_DEBIAN_FASHION.parent], download=False)
    assert d.x_train.shape == (60000, 784) and d.x_test.shape == (10000, 784)
    assert d.source == str(_DEBIAN_FASHION)
    assert sorted(np.bincount(d.y_test)) == [1000] * 10


def test_truncated_idx_in_a_dataset(tmp_path):
    _fake_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "rb") as f:
        raw = f.read()
    with gzip.open(path, "wb") as f:
        f.write(raw[:-100])
    with pytest.raises(DataError, match="train-images.*truncated"):
        load_dataset("mnist", data_dir=tmp_path, download=False, verify=False)
    with pytest.raises(DataError, match="md5"):  # with verification the digest catches it first
        load_dataset("mnist", data_dir=tmp_path, download=False)


def test_missing_files_message_says_where_and_how(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", data_dir=tmp_path / "empty", download=False,
                     search_path=[tmp_path / "system"])
    msg = str(e.value)
    assert str(tmp_path / "empty") in msg and str(tmp_path / "system" / "fashion-mnist") in msg
    assert str(tmp_path / "cache" / "ctgep" / "fashion-mnist") in msg
    assert "--data-dir" in msg and "CTGEP_DATA_DIR" in msg and "http" in msg
    assert "\n" not in msg
    assert "/usr/share/datasets" not in msg  # the tests never look at the machine's folders


def test_search_path_argument_environment_and_default(tmp_path, monkeypatch):
    """`<root>/<name>` for each root: the argument, else $CTGEP_DATA_PATH, else Debian's folder."""
    arrays, sums = _fake_mnist(tmp_path / "b" / "mnist")
    monkeypatch.setitem(_data.CHECKSUMS, "mnist", sums)
    roots = [tmp_path / "a", tmp_path / "b"]
    assert load_dataset("mnist", download=False, search_path=roots).source == str(tmp_path / "b" / "mnist")
    monkeypatch.setenv("CTGEP_DATA_PATH", os.pathsep.join(map(str, roots)))
    assert load_dataset("mnist", download=False).source == str(tmp_path / "b" / "mnist")
    assert _data.search_path() == roots
    with pytest.raises(DataError, match="not found"):  # the argument replaces the variable
        load_dataset("mnist", download=False, search_path=[tmp_path / "a"])
    monkeypatch.setenv("CTGEP_DATA_PATH", "")
    assert _data.search_path() == []
    monkeypatch.delenv("CTGEP_DATA_PATH")
    assert _data.search_path() == [pathlib.Path("/usr/share/datasets")]


def test_a_mistyped_data_dir_is_an_error_not_a_new_folder(tmp_path, monkeypatch):
    def no_download(*args):
        raise AssertionError("tried to download")

    monkeypatch.setattr(_data, "_download", no_download)
    for download in (True, False):
        with pytest.raises(DataError, match="does not exist") as e:
            load_dataset("mnist", data_dir=tmp_path / "mnsit", download=download)
        assert "\n" not in str(e.value) and str(tmp_path / "mnsit") in str(e.value)
        assert not (tmp_path / "mnsit").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="not a folder"):
        load_dataset("mnist", data_dir=tmp_path / "file")


@contextlib.contextmanager
def _serve(folder):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/files/"
    finally:
        server.shutdown()
        server.server_close()


def test_download_from_a_local_http_server(tmp_path, monkeypatch):
    arrays, sums = _fake_mnist(tmp_path / "site" / "files", seed=1)
    monkeypatch.setitem(_data.CHECKSUMS, "mnist", sums)
    with _serve(tmp_path / "site") as url:
        monkeypatch.setitem(_data.BASE_URLS, "mnist", url)
        target = tmp_path / "downloaded"
        target.mkdir()
        d = load_dataset("mnist", data_dir=target, download=True)
        assert sorted(p.name for p in target.iterdir()) == sorted(s + ".gz" for s in FILES.values())
        np.testing.assert_array_equal(d.y_train, arrays["train_labels"])
        # A download that does not match the published digest is refused and not kept.
        monkeypatch.setitem(_data.CHECKSUMS, "mnist", dict(sums, **{"t10k-images-idx3-ubyte.gz": ("f" * 32,)}))
        (tmp_path / "bad").mkdir()
        with pytest.raises(DataError, match="md5"):
            load_dataset("mnist", data_dir=tmp_path / "bad", download=True)
        assert not (tmp_path / "bad" / "t10k-images-idx3-ubyte.gz").exists()
        assert not [p for p in (tmp_path / "bad").iterdir() if p.name.endswith(".part")]
        monkeypatch.setitem(_data.CHECKSUMS, "mnist", sums)
        # Into the cache when no folder is given.
        d2 = load_dataset("mnist", download=True)
        assert pathlib.Path(d2.source) == tmp_path / "cache" / "ctgep" / "mnist"
    # Nothing listens any more: a clear one-line message, no half-made folder, and the given
    # folder left as it was.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    (tmp_path / "offline").mkdir()
    with pytest.raises(DataError, match="downloading into .* failed"):
        load_dataset("mnist", data_dir=tmp_path / "offline", download=True)
    assert (tmp_path / "offline").is_dir() and not list((tmp_path / "offline").iterdir())
    # Into the cache: a failed download leaves no ctgep/ folder (nor the cache it created).
    with pytest.raises(DataError, match="downloading into .* failed"):
        load_dataset("mnist", download=True)
    assert not (tmp_path / "empty-cache").exists()
    (tmp_path / "empty-cache").mkdir()
    with pytest.raises(DataError, match="downloading into .* failed"):
        load_dataset("mnist", download=True)
    assert list((tmp_path / "empty-cache").iterdir()) == []


def test_finding_the_files_creates_no_cache_folder(tmp_path, monkeypatch):
    """A run that does not download leaves ~/.cache/ctgep alone (found elsewhere, or not at all)."""
    _, sums = _fake_mnist(tmp_path / "data")
    monkeypatch.setitem(_data.CHECKSUMS, "mnist", sums)
    monkeypatch.setenv("CTGEP_DATA_DIR", str(tmp_path / "data"))
    load_dataset("mnist")
    load_dataset("digits")
    monkeypatch.delenv("CTGEP_DATA_DIR")
    with pytest.raises(DataError):
        load_dataset("mnist", download=False)
    assert not (tmp_path / "cache").exists()


_REAL_DIR = os.environ.get("CTGEP_DATA_DIR")  # read before the fixture hides it


@pytest.mark.skipif(not _REAL_DIR, reason="set CTGEP_DATA_DIR to a folder with MNIST to run")
def test_real_mnist_when_available():
    try:
        d = load_dataset("mnist", data_dir=_REAL_DIR, download=False)
    except DataError as e:
        if "not found" in str(e):
            pytest.skip("no MNIST under CTGEP_DATA_DIR")
        raise
    assert d.x_train.shape == (60000, 784) and d.x_test.shape == (10000, 784)
    assert ctgep.load_dataset is load_dataset


def test_shifted_images_are_translations_with_blank_fill():
    """`data.shift` augmentation: each image moves by a whole offset in [−k, k]², every offset
    occurs, what enters from outside is background, and k = 0 leaves the images alone."""
    import jax.random as jr

    from ctgep._experiment.augment import shift_images

    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 1.0, (3000, 64)).astype(np.float32)  # no zero pixel: offsets are unique
    out = np.asarray(shift_images(jr.key(0), x, 2)).reshape(-1, 8, 8)
    imgs = x.reshape(-1, 8, 8)
    seen = set()
    for img, moved in zip(imgs, out):
        matches = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                ref = np.zeros_like(img)
                ref[max(dy, 0):8 + min(dy, 0), max(dx, 0):8 + min(dx, 0)] = \
                    img[max(-dy, 0):8 + min(-dy, 0), max(-dx, 0):8 + min(-dx, 0)]
                if np.array_equal(moved, ref):
                    matches.append((dy, dx))
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == 25
    assert np.array_equal(np.asarray(shift_images(jr.key(0), x, 0)), x)
    with pytest.raises(ValueError, match="not a square image"):
        shift_images(jr.key(0), x[:, :63], 1)
