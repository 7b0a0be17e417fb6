"""How close two parameter-shaped pytrees are: cosine, relative error, sign agreement, angle.

Any two of the EP estimate (endpoint, integrated; one-sided, centered), ν, RBP, BPTT(T) and
finite differences can be compared, per parameter array ("Wf[0]", "Wb[1]", "b[2]", …) and in
total (all entries concatenated).
"""

import jax
import numpy as np
import xarray as xr


def _leaves(tree):
    """`(name, flat numpy array)` for each array leaf, named by its path (`Wf[0]`, `b[1]` …)."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if leaf is None or not hasattr(leaf, "shape"):
            continue
        name = jax.tree_util.keystr(path).lstrip(".")
        out.append((name, np.ravel(np.asarray(leaf, dtype=np.float64))))
    return out


def _paired(a, b):
    la, lb = _leaves(a), _leaves(b)
    if [n for n, _ in la] != [n for n, _ in lb] or any(
        x.shape != y.shape for (_, x), (_, y) in zip(la, lb)
    ):
        raise ValueError(
            "the two pytrees to compare must have the same structure and shapes, got "
            f"{[(n, x.shape) for n, x in la]} and {[(n, y.shape) for n, y in lb]}"
        )
    if not la:
        raise ValueError("nothing to compare: the pytrees hold no arrays")
    return la, lb


def _flat(tree):
    return np.concatenate([v for _, v in _leaves(tree)])


def cosine_similarity(a, b) -> float:
    """`⟨a, b⟩ / (‖a‖ ‖b‖)` over all entries (0 when either is zero)."""
    _paired(a, b)
    return _cosine(_flat(a), _flat(b))


def relative_error(estimate, reference) -> float:
    """`‖estimate − reference‖ / ‖reference‖` over all entries."""
    _paired(estimate, reference)
    return _relerr(_flat(estimate), _flat(reference))


def sign_agreement(estimate, reference) -> float:
    """Fraction of entries whose signs agree (entries where the reference is 0 are skipped)."""
    _paired(estimate, reference)
    return _signs(_flat(estimate), _flat(reference))


def angle(a, b) -> float:
    """The angle between `a` and `b` in degrees."""
    return float(np.degrees(np.arccos(np.clip(cosine_similarity(a, b), -1.0, 1.0))))


def _cosine(u, v):
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    return float(u @ v / (nu * nv)) if nu > 0 and nv > 0 else 0.0


def _relerr(u, v):
    nv = np.linalg.norm(v)
    diff = np.linalg.norm(u - v)
    return float(diff / nv) if nv > 0 else (0.0 if diff == 0 else float("inf"))


def _signs(u, v):
    keep = v != 0
    return float(np.mean(np.sign(u[keep]) == np.sign(v[keep]))) if keep.any() else 1.0


def compare(estimate, reference) -> xr.Dataset:
    """Per parameter array and in total: cosine similarity, relative error, sign agreement, angle.

    Returns a Dataset over the dim `group` (the leaf names, then "total"), with variables
    `cosine`, `relative_error`, `sign_agreement`, `angle_deg` and `norm_ratio`
    (`‖estimate‖/‖reference‖`).
    """
    la, lb = _paired(estimate, reference)
    groups = la + [("total", np.concatenate([v for _, v in la]))]
    refs = lb + [("total", np.concatenate([v for _, v in lb]))]
    cos = np.array([_cosine(u, v) for (_, u), (_, v) in zip(groups, refs)])
    norms = np.array([np.linalg.norm(u) / max(np.linalg.norm(v), 1e-300) for (_, u), (_, v) in zip(groups, refs)])
    return xr.Dataset(
        {
            "cosine": ("group", cos),
            "relative_error": ("group", np.array([_relerr(u, v) for (_, u), (_, v) in zip(groups, refs)])),
            "sign_agreement": ("group", np.array([_signs(u, v) for (_, u), (_, v) in zip(groups, refs)])),
            "angle_deg": ("group", np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))),
            "norm_ratio": ("group", norms),
        },
        coords={"group": [n for n, _ in groups]},
    )
