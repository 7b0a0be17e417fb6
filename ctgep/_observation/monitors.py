"""Monitors: what `ctgep.record` keeps of a phase, resolved from the user's choices into a
hashable spec, and the observer function that extracts one record (docs/model.md)."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from .._dynamics import field as F

DEFAULT_GRID_POINTS = 201


@dataclasses.dataclass(frozen=True)
class MonitorSpec:
    """What to record (hashable: it is a static argument of the jitted runners)."""

    samples: tuple[int, ...]
    units: tuple[tuple[int, tuple[int, ...]], ...]  # (layer index 1..L, units) per monitored layer
    increments: tuple[int, ...]  # leaf indices of the parameters recorded in full
    every: int  # record every n-th step (0: fixed grid)
    grid: tuple[float, ...] | None  # grid times of this phase (≤ its horizon)


def param_names(params) -> list[str]:
    """`Wf_0`, `Wb_1`, `b_2` … for each inexact array leaf of the network."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    names = []
    for path, _ in leaves:
        s = jax.tree_util.keystr(path).lstrip(".")
        names.append(s.replace("[", "_").replace("]", "").replace(".", "_"))
    return names


def param_layer(name: str) -> int:
    """The layer a parameter feeds (tuple index + 1 for the shipped networks), or −1."""
    tail = name.rsplit("_", 1)
    return int(tail[1]) + 1 if len(tail) == 2 and tail[1].isdigit() else -1


def resolve_layers(layers, widths) -> list[int]:
    n = len(widths)
    if layers is None:
        return list(range(1, n + 1))
    if isinstance(layers, (int, np.integer)):
        layers = [layers]
    out = []
    for l in layers:
        if not isinstance(l, (int, np.integer)) or isinstance(l, bool):
            raise ValueError(f"layers: {l!r} is not a layer index")
        li = int(l) + n + 1 if l < 0 else int(l)
        if not 1 <= li <= n:
            raise ValueError(
                f"layers: unknown layer index {l}; the network's dynamic layers are 1..{n} "
                "(0 is the clamped input, −1 the output)"
            )
        if li not in out:
            out.append(li)
    return sorted(out)


def _indices(spec, size: int, name: str, where: str) -> tuple[int, ...]:
    """None (all), a count k (the first k) or a list of distinct indices into `range(size)`."""
    if spec is None:
        return tuple(range(size))
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        if spec < 1:
            raise ValueError(f"{name}={spec!r} must be a positive count")
        return tuple(range(min(int(spec), size)))
    idx = np.asarray(spec)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{name}: {spec!r} must be a count or a non-empty list of indices")
    bad = idx[(idx < 0) | (idx >= size)]
    if bad.size:
        raise ValueError(f"{name}: index {int(bad[0])} out of range for {where}")
    return tuple(int(i) for i in dict.fromkeys(idx.tolist()))


def resolve_units(neurons, layers, widths, explicit_layers=None) -> tuple[tuple[int, tuple[int, ...]], ...]:
    def pick(spec, layer):
        width = widths[layer - 1]
        return _indices(spec, width, "neurons", f"layer {layer} of width {width}")

    if isinstance(neurons, dict):
        keys = resolve_layers(list(neurons), widths)
        spec = {k: neurons[orig] for k, orig in zip(keys, neurons)}
        chosen = sorted(keys) if explicit_layers is None else layers
        missing = [k for k in keys if k not in chosen]
        if missing:
            raise ValueError(f"neurons: layer {missing[0]} is not among the recorded layers {chosen}")
        return tuple((l, pick(spec.get(l), l)) for l in chosen)
    return tuple((l, pick(neurons, l)) for l in layers)


def resolve_samples(samples, batch) -> tuple[int, ...]:
    return _indices(samples, batch, "samples", f"a batch of {batch}")


def resolve_sampling(sampling, horizon, dt=None):
    """→ (every, grid): `every` > 0 for step sampling, or a sorted grid of times."""
    if sampling is None or (isinstance(sampling, str) and sampling == "grid"):
        points = DEFAULT_GRID_POINTS
        if dt is not None:  # the Euler scheme cannot sample finer than its step
            points = max(min(points, int(math.floor(horizon / dt + 1e-9)) + 1), 2)
        return 0, np.linspace(0.0, horizon, points)
    if isinstance(sampling, str):
        if sampling == "steps":
            return 1, None
        raise ValueError(
            f"sampling={sampling!r} must be 'grid', 'steps', a step stride n ≥ 1 or an array of times"
        )
    if isinstance(sampling, (int, np.integer)) and not isinstance(sampling, bool):
        if sampling < 1:
            raise ValueError(f"sampling={sampling!r}: a step stride must be ≥ 1")
        return int(sampling), None
    grid = np.asarray(sampling, dtype=float)
    if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid < 0) or np.any(
        np.diff(grid) <= 0
    ):
        raise ValueError("sampling: a time grid must be a non-empty, strictly increasing 1-D array of times ≥ 0")
    if grid[0] > horizon:
        raise ValueError(f"sampling: the time grid starts at {grid[0]} after both phases' horizons ({horizon})")
    return 0, grid


def monitor(spec: MonitorSpec, nudged: bool, beta, s_ref, widths):
    """`(s, mu, acc) → dict` of what one record holds (for the chosen samples only)."""
    rows = jnp.asarray(spec.samples)

    def pick(s):
        return jnp.concatenate([s[l - 1][rows][:, jnp.asarray(u)] for l, u in spec.units], axis=-1)

    def fn(s, mu, acc):
        out = {"state": pick(s), "residual": F.residual(mu)[rows]}
        if nudged:
            err = tuple((a - b) / beta for a, b in zip(s, s_ref))
            out["error"] = pick(err)
            out["error_magnitude"] = jnp.stack(
                [jnp.sqrt(jnp.mean(e[rows] ** 2, axis=-1)) for e in err], axis=-1
            )
            leaves = jax.tree_util.tree_leaves(acc)
            out["synapse_norm"] = jnp.stack([jnp.sqrt(jnp.sum((a / beta) ** 2)) for a in leaves])
            for i in spec.increments:
                out[f"inc{i}"] = leaves[i] / beta
        return out

    return fn
