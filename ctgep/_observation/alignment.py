"""Weight alignment between feedback and feedforward weights (paper §5.2, Figure 3).

For each pair of adjacent dynamic layers `l, l+1` of a :class:`LayeredNetwork` the feedback
matrix `Wb_l` (layer l+1 → l) is compared with the transpose of the feedforward matrix
`Wf_{l+1}` (layer l → l+1):

* `cos`: the Frobenius cosine `⟨Wb_l, Wf_{l+1}ᵀ⟩ / (‖Wb_l‖ ‖Wf_{l+1}‖)` (1 = symmetric);
* `trace`: the paper's `tr(Wf_{l+1} · Wb_l)`, which equals the unnormalised inner product.
"""

import numpy as np

from .._dynamics.networks import LayeredNetwork


def alignment(net: LayeredNetwork) -> dict[str, float]:
    """`{"cos_1_2": …, "trace_1_2": …, …}` for every adjacent pair of dynamic layers.

    Layers are numbered as in the design card (input 0, first hidden 1, …); a network with a
    single dynamic layer has no pair and gives an empty dict.
    """
    if not isinstance(net, LayeredNetwork):
        raise TypeError(f"net must be a LayeredNetwork, got {type(net).__name__}")
    out = {}
    for i, wb in enumerate(net.Wb):
        wf_t = net.Wf[i + 1].T
        inner = float(np.sum(np.asarray(wb, np.float64) * np.asarray(wf_t, np.float64)))
        norm = float(np.linalg.norm(np.asarray(wb, np.float64)) * np.linalg.norm(np.asarray(wf_t, np.float64)))
        out[f"cos_{i + 1}_{i + 2}"] = inner / norm if norm > 0 else float("nan")
        out[f"trace_{i + 1}_{i + 2}"] = inner
    return out
