"""Data parallelism with JAX's own sharding: one minibatch over a 1-D mesh of devices.

`training.devices` (``"all"`` or a number; default 1) chooses the devices. With one device
nothing here is used and the train step is the single-device one. With several, the train step
is jitted over a :class:`jax.sharding.Mesh` whose one axis, ``"batch"``, splits the minibatch
(and its warm-start particles) row-wise; the parameters, the optimiser state and the epoch's
statistics are replicated. Because the step is jitted with global semantics, the batch means of
the EP update and the steady-state test of a phase (every sample of the *global* minibatch) are
reduced across the devices by XLA: the step computes what the single-device step computes on
the same minibatch, up to the order of floating-point sums.

Several processes (hosts) join with :func:`initialize_distributed` (``jax.distributed.initialize``)
before any other JAX work; the mesh then spans every process's devices, each process puts only its own
rows of each minibatch on its devices (:func:`shard_rows`), and only process 0 writes files
(:func:`is_writer`).
"""

import math
import os
import socket
import time

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .._errors import CardError, UsageError

__all__ = ["AXIS", "data_mesh", "device_count", "initialize_distributed", "is_writer", "local",
           "replicate", "shard_rows"]

AXIS = "batch"
# JAX_COORDINATOR_ADDRESS is JAX's own; the process count and id are ctgep's names, as JAX
# reads those only from a cluster's environment (SLURM, Open MPI …), which it also consults.
ENV = {"coordinator": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID"}
# A job of several tasks under these launchers starts a multi-process run without any option.
CLUSTER_SIZE = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")
# Seconds a process waits for the coordinator (--coordinator-timeout).
TIMEOUT_ENV = "CTGEP_COORDINATOR_TIMEOUT"


def initialize_distributed(coordinator=None, num_processes=None, process_id=None,
                           timeout: float | None = None) -> bool:
    """Join a multi-process run (``jax.distributed.initialize``) when any of the three is given
    here or in ``$JAX_COORDINATOR_ADDRESS``, ``$JAX_NUM_PROCESSES``, ``$JAX_PROCESS_ID``, or
    when a SLURM or Open MPI job has several tasks (JAX then reads the rest from there).

    A process other than 0 (with its id given, not read from a cluster) first waits up to
    `timeout` seconds (default ``$CTGEP_COORDINATOR_TIMEOUT``, else 300, JAX's own) for the
    coordinator to accept a connection, and raises a one-line `UsageError` if none does: JAX
    itself would abort the process from C++ with a stack trace, as it still does for process 0
    when the others never arrive. Must run before any other JAX work of the process.
    Returns whether it joined one.
    """
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    for k, var in ENV.items():
        if given[k] is None and os.environ.get(var):
            given[k] = os.environ[var]
    cluster = any(os.environ.get(v, "").isdigit() and int(os.environ[v]) > 1 for v in CLUSTER_SIZE)
    if all(v is None for v in given.values()) and not cluster:
        return False
    try:
        n = None if given["num_processes"] is None else int(given["num_processes"])
        i = None if given["process_id"] is None else int(given["process_id"])
    except ValueError:
        raise UsageError(f"the process count and id must be integers, not {given['num_processes']!r} "
                         f"and {given['process_id']!r}") from None
    if (n is not None and n < 1) or (i is not None and n is not None and not 0 <= i < n):
        raise UsageError(f"the process count ({n}) must be ≥ 1 and the process id ({i}) in [0, {n})")
    raw = timeout if timeout is not None else os.environ.get(TIMEOUT_ENV) or 300
    try:
        timeout = float(raw)
    except (TypeError, ValueError):
        timeout = math.nan
    if not (math.isfinite(timeout) and timeout > 0):
        raise UsageError(f"the coordinator timeout must be a finite number of seconds > 0, not {raw!r}")
    if given["coordinator"] is not None and i not in (None, 0):
        _wait_for_coordinator(given["coordinator"], timeout)
    try:
        jax.distributed.initialize(given["coordinator"], n, i,
                                   initialization_timeout=max(1, round(timeout)))
    except (ValueError, TypeError) as e:
        raise UsageError(f"cannot start the multi-process run: {e} (give --coordinator HOST:PORT, "
                         "--num-processes and --process-id)") from None
    return True


def _wait_for_coordinator(address: str, timeout: float) -> None:
    """Return once ``HOST:PORT`` accepts a TCP connection; a one-line error after `timeout` s."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--coordinator must be HOST:PORT with a port in 1 … 65535, not {address!r}")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=min(2.0, timeout)):
                return
        except socket.gaierror as e:  # an unknown host does not appear later
            raise UsageError(f"--coordinator {address}: unknown host ({e.strerror or e})") from None
        except OSError as e:
            if time.monotonic() >= deadline:
                raise UsageError(f"no coordinator answered at {address} within {timeout:g} s ({e.strerror or e}): "
                                 "start process 0 there first, or set --coordinator-timeout") from None
            time.sleep(0.2)


def is_writer() -> bool:
    """Whether this process writes the run directory: the only process, or process 0."""
    return jax.process_index() == 0


def device_count(devices: str) -> int:
    """The number of devices `training.devices` names (``"all"``: every device of every process)."""
    if devices == "all":
        return jax.device_count()
    return int(devices)


def data_mesh(devices: str, batch_size: int) -> Mesh | None:
    """The 1-D ``"batch"`` mesh of `training.devices`, or None for one device (no sharding).

    With several processes each contributes the same number of its local devices.
    """
    n = device_count(devices)
    if n == 1:
        return None
    if n > jax.device_count():
        raise CardError(f"training.devices={devices} but only {jax.device_count()} device(s) are visible "
                        f"({jax.devices()[0].platform}); use 'all' or fewer")
    if batch_size % n:
        raise CardError(f"training.batch_size={batch_size} is not a multiple of the {n} devices of "
                        f"training.devices={devices!r}; every device takes an equal share of the minibatch")
    procs = jax.process_count()
    if n % procs:
        raise CardError(f"training.devices={devices} is not a multiple of the {procs} processes")
    chosen = [d for p in range(procs) for d in
              sorted((d for d in jax.devices() if d.process_index == p), key=lambda d: d.id)[:n // procs]]
    return Mesh(np.array(chosen), (AXIS,))


def replicate(tree, mesh: Mesh):
    """`tree`'s arrays as global arrays replicated on every device of `mesh` (leaves already
    replicated there are passed through). Every process must pass the same values."""
    sharding = NamedSharding(mesh, PartitionSpec())

    def put(a):
        if isinstance(a, jax.Array) and a.sharding == sharding:
            return a
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree_util.tree_map(put, tree)


def shard_rows(a, rows, mesh: Mesh):
    """The rows `rows` of the host array `a` (all of them when None) as one global array split
    over `mesh` along its first axis. Each process reads only the rows of its own devices."""
    sharding = NamedSharding(mesh, PartitionSpec(AXIS))
    n = len(a) if rows is None else len(rows)
    take = (lambda index: a[index]) if rows is None else (lambda index: a[rows[index[0]]])
    return jax.make_array_from_callback((n, *a.shape[1:]), sharding, take)


def local(tree):
    """`tree` with every replicated global array replaced by this process's first copy (a
    single-device array): for evaluation, checkpoints and the host, which need no mesh."""
    def one(a):
        if isinstance(a, jax.Array) and len(a.sharding.device_set) > 1 and a.is_fully_replicated:
            return a.addressable_data(0)
        return a

    return jax.tree_util.tree_map(one, tree)
