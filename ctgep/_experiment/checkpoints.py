"""Crash-safe checkpoints of a run directory's ``checkpoints/`` folder.

The parameters and optimiser state go to a fresh ``<tag>-<step>.eqx`` file
(``eqx.tree_serialise_leaves``; written to a temporary file then ``os.replace``d), then the
JSON sidecar ``<tag>.json`` that names it (and holds its sha256, the epoch, the batch within the
epoch, the optimiser step, the PRNG key and the partial epoch statistics) replaces the previous
one in one ``os.replace``. A process killed at any instant leaves the previous consistent
checkpoint. Files no sidecar names are pruned.

With ``phases.warm_start`` the ``latest`` checkpoint also saves the persistent free states of
the training examples to ``particles-<step>.npy``, named and hashed in its sidecar like the
parameters; ``best`` does not carry them.
"""

import hashlib
import io
import json
import os
import pathlib
import tempfile

import equinox as eqx
import numpy as np

from .._errors import RunDirError

FORMAT = 1


def atomic_write(path: pathlib.Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and one `os.replace` (fsynced)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _serialise(tree) -> bytes:
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, tree)
    return buf.getvalue()


def save(folder: pathlib.Path, tag: str, net, opt_state, meta: dict, particles=None) -> dict:
    """Checkpoint `(net, opt_state)` (and `particles`) as `tag`; returns the sidecar written."""
    blob = _serialise((net, opt_state))
    name = f"{tag}-{meta['step']:09d}.eqx"
    atomic_write(folder / name, blob)
    meta = dict(meta, format=FORMAT, params_file=name, sha256=hashlib.sha256(blob).hexdigest())
    if particles is not None:
        buf = io.BytesIO()
        np.save(buf, np.asarray(particles), allow_pickle=False)
        blob = buf.getvalue()
        name = f"particles-{meta['step']:09d}.npy"
        atomic_write(folder / name, blob)
        meta.update(particles_file=name, particles_sha256=hashlib.sha256(blob).hexdigest())
    text = json.dumps(meta, indent=1)
    atomic_write(folder / f"{tag}.json", text.encode())
    prune(folder)
    return json.loads(text)


def prune(folder: pathlib.Path) -> None:
    """Remove parameter and particle files no sidecar names, and temporary files of killed writers."""
    keep = set()
    for tag in ("latest", "best"):
        try:
            meta = json.loads((folder / f"{tag}.json").read_text())
        except (OSError, ValueError):
            continue
        keep.update(meta.get(k) for k in ("params_file", "particles_file"))
    for p in folder.iterdir():
        if (p.suffix in (".eqx", ".npy") and p.name not in keep) or p.name.endswith(".tmp"):
            try:
                p.unlink()
            except OSError:
                pass


def _read_checked(folder: pathlib.Path, side: pathlib.Path, meta: dict, file_key: str, sha_key: str) -> bytes:
    """The bytes of the file a sidecar names under `file_key`, checked against its sha256."""
    if not isinstance(meta.get(file_key), str):
        raise RunDirError(f"checkpoint sidecar {side} names no {file_key}; it is damaged")
    path = folder / meta[file_key]
    try:
        blob = path.read_bytes()
    except OSError as e:
        what = "is missing" if isinstance(e, FileNotFoundError) else f"cannot be read ({e.__class__.__name__})"
        raise RunDirError(f"checkpoint file {path} (named by {side.name}) {what}") from None
    if hashlib.sha256(blob).hexdigest() != meta.get(sha_key):
        raise RunDirError(f"checkpoint {folder / meta[file_key]} does not match its sidecar's sha256")
    return blob


def read_sidecar(side: pathlib.Path) -> dict:
    """The JSON sidecar `side`; a RunDirError that says whether it is missing or damaged."""
    try:
        meta = json.loads(side.read_text())
    except FileNotFoundError:
        raise RunDirError(f"checkpoint sidecar {side} is missing") from None
    except (OSError, ValueError) as e:
        raise RunDirError(f"checkpoint sidecar {side} is unreadable or truncated ({e.__class__.__name__})") from None
    if not isinstance(meta, dict):
        raise RunDirError(f"checkpoint sidecar {side} is damaged (not a JSON object)")
    return meta


def load(folder: pathlib.Path, tag: str, like):
    """`(tree, sidecar)` of checkpoint `tag`; `like` gives the tree's structure and shapes."""
    side = folder / f"{tag}.json"
    meta = read_sidecar(side)
    blob = _read_checked(folder, side, meta, "params_file", "sha256")
    try:
        tree = eqx.tree_deserialise_leaves(io.BytesIO(blob), like)
    except Exception as e:  # shape/structure mismatch between the card and the file
        raise RunDirError(f"checkpoint {folder / meta['params_file']} does not fit the run's card ({e})") from None
    return tree, meta


def has_particles(folder: pathlib.Path, meta: dict) -> bool:
    """Whether a `latest` sidecar names a particles file that is present."""
    return "particles_file" in meta and (folder / meta["particles_file"]).is_file()


def load_particles(folder: pathlib.Path, meta: dict, shape, dtype):
    """The persistent free states a `latest` sidecar names, checked against its sha256 and shape."""
    side = folder / "latest.json"
    if "particles_file" not in meta:
        raise RunDirError(f"checkpoint {side} has no particles file, but the card sets phases.warm_start")
    if not (folder / meta["particles_file"]).is_file():
        raise RunDirError(f"the warm-start particles {folder / meta['particles_file']} named by {side} are "
                          "missing (committed runs leave them out); resume needs them, or restarts the warm "
                          "starts from zero with --reset-particles")
    blob = _read_checked(folder, side, meta, "particles_file", "particles_sha256")
    a = np.load(io.BytesIO(blob), allow_pickle=False)
    if a.shape != tuple(shape) or a.dtype != dtype:
        raise RunDirError(f"checkpoint {folder / meta['particles_file']} holds {a.dtype}{list(a.shape)} "
                          f"particles, the run's card needs {np.dtype(dtype)}{list(shape)}")
    return a
