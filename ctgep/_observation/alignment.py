"""Weight alignment between feedback and feedforward weights (paper §5.2, Figure 3).

For each pair of adjacent dynamic layers `l, l+1` of a :class:`LayeredNetwork` the feedback
matrix `Wb_l` (layer l+1 → l) is compared with the transpose of the feedforward matrix
`Wf_{l+1}` (layer l → l+1). A network with another layout of its feedback (the
:class:`~ctgep.ConvNetwork`, whose feedback kernels are compared with the forward kernels they
transpose) names the arrays to compare with by a `feedback_references()` method:

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
    if isinstance(net, LayeredNetwork):
        references = tuple(w.T for w in net.Wf[1:])
    elif hasattr(net, "feedback_references"):
        references = net.feedback_references()
    else:
        raise TypeError(f"net must be a LayeredNetwork or have feedback_references(), got {type(net).__name__}")
    out = {}
    for i, (wb, wf_t) in enumerate(zip(net.Wb, references)):
        inner = float(np.sum(np.asarray(wb, np.float64) * np.asarray(wf_t, np.float64)))
        norm = float(np.linalg.norm(np.asarray(wb, np.float64)) * np.linalg.norm(np.asarray(wf_t, np.float64)))
        out[f"cos_{i + 1}_{i + 2}"] = inner / norm if norm > 0 else float("nan")
        out[f"trace_{i + 1}_{i + 2}"] = inner
    return out
