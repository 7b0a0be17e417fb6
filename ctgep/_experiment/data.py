"""Datasets for training: scikit-learn's bundled digits, and MNIST / Fashion-MNIST IDX files.

Every dataset comes back as a :class:`Dataset` of float32 inputs scaled to [0, 1] and integer
labels, with a fixed train/test split and an optional validation split carved from the training
set. MNIST-like files are looked for, in order, in

1. ``data_dir`` (argument; it must exist), then ``$CTGEP_DATA_DIR`` — each either holding the
   four files or a ``<name>/`` sub-folder with them;
2. ``<root>/<name>`` for each root of the search path: the ``search_path`` argument, else
   ``$CTGEP_DATA_PATH`` (folders separated by ``os.pathsep``; empty: none), else
   :data:`DEFAULT_SEARCH_PATH` (Debian's ``/usr/share/datasets``);
3. the user cache ``$XDG_CACHE_HOME/ctgep/<name>`` (default ``~/.cache/ctgep/<name>``).

When none has them and ``download=True`` they are fetched from the official mirror into
``data_dir`` when given (an existing folder: a typo is an error, never a new folder), else into
the cache, which is created only then (and removed again if the download fails). A compressed
file is accepted when its bytes have a published md5 digest or, failing that, when its
decompressed IDX payload has a known sha256 digest: Debian's ``dataset-fashion-mnist`` package
ships the official payloads recompressed, so their ``.gz`` bytes differ while the data do not.
"""

import dataclasses
import gzip
import hashlib
import os
import pathlib
import shutil
import tempfile
import urllib.error
import urllib.request
import zlib

import numpy as np

from .._errors import DataError

__all__ = ["DATASETS", "DEFAULT_SEARCH_PATH", "DataError", "Dataset", "load_dataset", "read_idx",
           "search_path", "write_idx"]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Inputs in [0, 1] (float32, one row per example) and integer class labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    n_classes: int = 10
    source: str = ""

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])


FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: md5 digests of the `.gz` files accepted for each dataset (several where mirrors differ).
CHECKSUMS: dict[str, dict[str, tuple[str, ...]]] = {
    "mnist": {
        # The official training images, and a lossy reconstruction some environments ship.
        "train-images-idx3-ubyte.gz": (
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "a0800b9e8c812b9e45b911451b965316",
        ),
        "train-labels-idx1-ubyte.gz": ("d53e105ee54ea40749a09fcbcd1e9432",),
        "t10k-images-idx3-ubyte.gz": ("9fb629c4189551a2d022fa330f9573f3",),
        "t10k-labels-idx1-ubyte.gz": ("ec29112dd5afa0611ce80d1b7f02629c",),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d",),
        "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe",),
        "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79",),
        "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310",),
    },
}

#: sha256 digests of the decompressed IDX payloads accepted for each dataset: what is verified
#: when a `.gz` file's own md5 is none of :data:`CHECKSUMS` (a recompressed copy of the same data).
PAYLOAD_SHA256: dict[str, dict[str, tuple[str, ...]]] = {
    "mnist": {
        # The lossy reconstruction of the training images (the official payload's digest is not
        # recorded: the official .gz is accepted by its md5 above).
        "train-images-idx3-ubyte": ("374ba378bee06c633f4800ac6a495f71d1b80b0e82bf763acbfa4c7e9c379f75",),
        "train-labels-idx1-ubyte": ("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",),
        "t10k-images-idx3-ubyte": ("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",),
        "t10k-labels-idx1-ubyte": ("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",),
    },
    "fashion-mnist": {
        # The payloads of Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1 (upstream's
        # files of 2020-05-23, recompressed: .gz md5s f78720b4…, 0d30e22e…, cf8536b0…, 10bea18f…).
        "train-images-idx3-ubyte": ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",),
        "train-labels-idx1-ubyte": ("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",),
        "t10k-images-idx3-ubyte": ("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",),
        "t10k-labels-idx1-ubyte": ("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",),
    },
}

#: Where the official files are downloaded from.
BASE_URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}

DATASETS = ("digits", "mnist", "fashion-mnist")
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist"}
DOWNLOAD_TIMEOUT = 30.0
#: System folders searched for ``<root>/<name>`` when neither `search_path` nor $CTGEP_DATA_PATH is set.
DEFAULT_SEARCH_PATH = ("/usr/share/datasets",)


def _canonical(name: str) -> str:
    key = str(name).lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise DataError(f"dataset={name!r} is unknown; choose one of {list(DATASETS)}")
    return key


# ----------------------------------------------------------------------------------------------
# IDX files


def read_idx(path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array; clear errors if bad."""
    path = pathlib.Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot be read as {'gzip' if path.suffix == '.gz' else 'IDX'} "
                        f"({e.__class__.__name__}: {e}); the file is truncated or corrupted, "
                        "delete it and fetch it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number); "
                        "delete it and fetch it again")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header; delete it and fetch it again")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(f"{path}: IDX header announces shape {shape} ({expected} bytes) but the "
                        f"file holds {len(raw) - header}; it is truncated or corrupted, delete "
                        "it and fetch it again")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def write_idx(path, array) -> None:
    """Write a uint8 array as an IDX file (gzip-compressed when `path` ends in .gz)."""
    array = np.ascontiguousarray(array, np.uint8)
    data = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape) + array.tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)


def _md5(path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _find_file(folder: pathlib.Path, stem: str):
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def search_path(search_path=None) -> list[pathlib.Path]:
    """The roots searched for ``<root>/<name>``: `search_path`, else ``$CTGEP_DATA_PATH``
    (``os.pathsep``-separated; set but empty: none), else :data:`DEFAULT_SEARCH_PATH`."""
    if search_path is None:
        env = os.environ.get("CTGEP_DATA_PATH")
        search_path = DEFAULT_SEARCH_PATH if env is None else [p for p in env.split(os.pathsep) if p]
    elif isinstance(search_path, (str, os.PathLike)):
        search_path = [search_path]
    return [pathlib.Path(p).expanduser() for p in search_path]


def _candidate_dirs(name: str, data_dir, search=None) -> list[pathlib.Path]:
    roots = []
    if data_dir:
        roots.append(pathlib.Path(data_dir).expanduser())
    env = os.environ.get("CTGEP_DATA_DIR")
    if env:
        roots.append(pathlib.Path(env).expanduser())
    dirs = []
    for r in roots:
        dirs += [r, r / name]
    dirs += [r / name for r in search_path(search)]
    dirs.append(_cache_dir(name))
    return dirs


def _cache_dir(name: str) -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "ctgep" / name


def _download(name: str, folder: pathlib.Path) -> None:
    """Fetch the four official `.gz` files into the existing `folder` (atomically, checksums verified)."""
    base = BASE_URLS[name]
    for stem in FILES.values():
        target = folder / (stem + ".gz")
        if target.is_file():
            continue
        url = base + stem + ".gz"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".download-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as r:
                shutil.copyfileobj(r, out)
            _verify(name, pathlib.Path(tmp), target.name)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _payload_sha256(path: pathlib.Path) -> str | None:
    """sha256 of the decompressed content of the gzip file `path`; None if it does not decompress."""
    h = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except (OSError, EOFError, zlib.error):
        return None
    return h.hexdigest()


def _verify(name: str, path: pathlib.Path, filename: str) -> None:
    """Accept the `.gz` file `path` (named `filename`) if its md5 is a published digest, else if
    its decompressed payload's sha256 is a known one; DataError naming both digests if neither."""
    accepted = CHECKSUMS[name].get(filename)
    stem = filename[:-3] if filename.endswith(".gz") else filename
    payloads = PAYLOAD_SHA256.get(name, {}).get(stem, ())
    if accepted is None and not payloads:
        return
    digest = _md5(path)
    if digest in (accepted or ()):
        return
    payload = _payload_sha256(path)
    if payload is not None and payload in payloads:
        return
    content = ("does not decompress" if payload is None
               else f"decompresses to a payload of sha256 {payload}, none of the known {list(payloads)}")
    raise DataError(f"{filename} from {path.parent}: md5 {digest} matches none of the known digests "
                    f"{list(accepted or ())} and the file {content}; the file is corrupted or not "
                    f"the official {name} file, delete it and fetch it again")


def _missing_folders(folder: pathlib.Path) -> list[pathlib.Path]:
    """`folder` and those of its parents that do not exist yet, innermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _locate(name: str, data_dir, download: bool, search=None) -> pathlib.Path:
    if data_dir and not pathlib.Path(data_dir).expanduser().is_dir():
        raise DataError(f"data folder {str(data_dir)!r} does not exist (or is not a folder); check "
                        "--data-dir / data.data_dir, or create the folder to download into it")
    dirs = _candidate_dirs(name, data_dir, search)
    for d in dirs:
        if all(_find_file(d, stem) for stem in FILES.values()):
            return d
    how = (f"download them from {BASE_URLS[name]}"
           + (" (apt-get install dataset-fashion-mnist also works)" if name == "fashion-mnist" else "")
           + ", then pass --data-dir DIR or set CTGEP_DATA_DIR")
    if download:
        target = pathlib.Path(data_dir).expanduser() if data_dir else _cache_dir(name)
        created = _missing_folders(target)
        try:
            target.mkdir(parents=True, exist_ok=True)
            _download(name, target)
            return target
        except BaseException as e:
            for folder in created:  # only the folders this attempt made, if it left them empty
                try:
                    folder.rmdir()
                except OSError:
                    break
            if isinstance(e, DataError) or not isinstance(e, (OSError, urllib.error.URLError, ValueError)):
                raise
            reason = getattr(e, "reason", e)
            raise DataError(f"{name} files not found (looked in {', '.join(map(str, dirs))}) "
                            f"and downloading into {target} failed ({reason}); {how}") from None
    raise DataError(f"{name} files {[s + '.gz' for s in FILES.values()]} not found (looked in "
                    f"{', '.join(map(str, dirs))}); {how} (downloading is off: data.download = false)")


def _load_idx_dataset(name: str, data_dir, download: bool, verify: bool, search=None):
    folder = _locate(name, data_dir, download, search)
    arrays = {}
    for key, stem in FILES.items():
        path = _find_file(folder, stem)
        if verify and path.suffix == ".gz":
            _verify(name, path, path.name)
        arrays[key] = read_idx(path)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DataError(f"{folder}: {split} images {images.shape} and labels {labels.shape} "
                            "do not match")
        if labels.size and labels.max() > 9:
            raise DataError(f"{folder}: {split} labels outside 0–9; the file is corrupted")
    flat = lambda a: (a.reshape(a.shape[0], -1).astype(np.float32) / 255.0)
    return (flat(arrays["train_images"]), arrays["train_labels"].astype(np.int32),
            flat(arrays["test_images"]), arrays["test_labels"].astype(np.int32), str(folder))


def _load_digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int32)
    # A fixed, stratified 80/20 split that does not depend on the training seed.
    order = np.random.default_rng(0).permutation(len(y))
    test = np.zeros(len(y), bool)
    for c in range(10):
        idx = order[y[order] == c]
        test[idx[: int(round(0.2 * len(idx)))]] = True
    train_idx, test_idx = order[~test[order]], order[test[order]]
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx], "sklearn.datasets.load_digits"


def load_dataset(
    name: str = "digits",
    *,
    data_dir=None,
    validation: float = 0.0,
    seed: int = 0,
    download: bool = True,
    verify: bool = True,
    search_path=None,
) -> Dataset:
    """Load `name` ("digits", "mnist" or "fashion-mnist") as a :class:`Dataset`.

    `validation`: fraction of the training set held out (chosen with `seed`) as `x_val/y_val`.
    `download`: fetch the official files when they are found nowhere. `verify`: check each
    compressed file by its md5, or else by the sha256 of its decompressed payload. `search_path`: the folders searched for ``<root>/<name>`` after
    `data_dir` and $CTGEP_DATA_DIR (default: $CTGEP_DATA_PATH, else :data:`DEFAULT_SEARCH_PATH`;
    see the module's docstring). Raises :class:`DataError` with a one-line explanation.
    """
    key = _canonical(name)
    if not 0.0 <= float(validation) < 1.0:
        raise DataError(f"validation={validation!r} must be a fraction in [0, 1)")
    if key == "digits":
        x_tr, y_tr, x_te, y_te, source = _load_digits()
    else:
        x_tr, y_tr, x_te, y_te, source = _load_idx_dataset(key, data_dir, download, verify, search_path)
    x_val = y_val = None
    if validation > 0:
        n_val = max(1, int(round(validation * len(y_tr))))
        if n_val >= len(y_tr):
            raise DataError(f"validation={validation!r} leaves no training examples")
        order = np.random.default_rng(seed).permutation(len(y_tr))
        x_val, y_val = x_tr[order[:n_val]], y_tr[order[:n_val]]
        x_tr, y_tr = x_tr[order[n_val:]], y_tr[order[n_val:]]
    return Dataset(key, x_tr, y_tr, x_te, y_te, x_val, y_val, 10, source)
