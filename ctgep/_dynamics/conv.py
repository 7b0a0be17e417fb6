"""A convolutional leaky-integrator network with untied feedback (the paper's Table 2 family).

Layers are numbered input → output as in :class:`~ctgep.LayeredNetwork`: `s₀ = x` (an image,
clamped), convolutional layers `s₁ … s_C` (feature maps), and a dense output layer `s_L`,
`L = C + 1`. Every dynamic layer is a leaky integrator with time constant 1,

    μ_l = F_l(ρ(s_{l−1}); K_l) + B_l(ρ(s_{l+1}); G_l) + b_l − s_l       (no B term at the output)

* `F_l(u; K) = pool_p(conv(u, K))`: a stride-1 convolution by the `k×k` kernel `K_l`
  (`HWIO` layout, zero padding `padding`), then average or max pooling over `p×p` blocks. The
  output layer's `F_L` is a dense matrix on the flattened last feature map.
* `B_l(r; G) = F_{l+1}(·; G)ᵀ r`: the **transposed** convolution (the adjoint of `F_{l+1}`'s
  linear map, pooling included) by the layer's *own* feedback kernel `G_l`, which has the shape
  of `K_{l+1}`. Nothing ties `G_l` to `K_{l+1}`: they start independent (`feedback="random"`),
  equal (`"transpose"`, at initialisation only) or at a chosen angle, and learn separately. The
  last conv layer's feedback from the output is a dense matrix of the shape of `W_Lᵀ`.
* `b_l`: one bias per feature map (shared over positions), one per output unit.

`pooling="average"` (the default; `pool=1`: none) keeps `μ` linear in the rates, so smooth
wherever `ρ` is, and the feedback a plain transposed convolution. Because average pooling after a
stride-1 convolution is one stride-`p` convolution by the kernel smoothed with a `p×p` box (size
`k + p − 1`), `F_l` is computed that way (about 4× fewer multiply-adds at `p = 2` than
convolving then pooling); `B_l` is the matching stride-`p` transposed convolution.

`pooling="max"` is the max pooling of discrete-time convolutional EP (Ernoult et al. 2019,
Laborieux et al. 2021), smoothed so that the dynamics keep their fixed points: each block's
drive is `τ·log mean exp(y/τ)` of its forward responses `y = conv(ρ(s_{l−1}), K_l)` (between
the block's mean, τ → ∞, and its maximum, τ → 0), and `B_{l−1}` spreads layer `l`'s rates over
the block by the softmax weights `softmax(y/τ)` (that drive's derivative) before the stride-1
transposed convolution by the untied `G_{l−1}`. The kernel stays untied; *where* the error
goes is read from the forward response, as the switches of a max-pooling layer's backward
pass are. With `G = K` and `ρ' = 1` the Jacobian is symmetric, as for average pooling. Hard
switches (`τ = 0`) are refused: the feedback then jumps whenever a block's largest response
changes, and on small networks with untied feedback the free phase mostly never settles (5 or
6 of 6 random networks, by each of Euler, block Gauss–Seidel and Tsit5). The convolutions run at
stride 1 and full resolution (about 5× the time per training step of the folded average
pooling: studies/benchmarks/RESULTS.md).

Convolutions are matrix products of shifted views (im2col, :func:`_convolve`) and transposed
convolutions the adjoint products added back in place (col2im, :func:`_convolve_transpose`):
on the CPU both are faster than `lax.conv_general_dilated` at these shapes, the transposed one
most (no dilation zeros).

A layer's `μ` needs only its neighbours' rates, so the alternating (Gauss–Seidel) Euler order
applies unchanged. The state stays the library's convention, one `(batch, n_l)` array per layer:
feature maps are flattened (`layout="NHWC"`: position-major, channels fastest; `"NCHW"`:
channel-major) and reshaped inside :meth:`ConvNetwork.vector_field`, so the simulator, the
rules, the gradients and the particle store see ordinary flat layers. `sizes` holds the flat
widths, input first.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from .activations import get_activation
from .convshape import conv_maps, conv_sizes
from .networks import AbstractRateNetwork, _at_angle, _glorot

__all__ = ["ConvNetwork", "conv_maps", "conv_sizes"]

LAYOUTS = ("NHWC", "NCHW")
POOLINGS = ("average", "max")


def _glorot_kernel(key, shape, dtype):
    k1, k2, c_in, c_out = shape
    limit = math.sqrt(6.0 / (k1 * k2 * (c_in + c_out)))
    return jr.uniform(key, shape, dtype, -limit, limit)


def _taps(k: int, stride: int, h: int, w: int):
    """For each kernel tap `(i, j)` of a `k×k` kernel, the rows and columns of the padded image it
    meets over an `h×w` output at `stride`: `(i, j, row slice, column slice)`."""
    for i in range(k):
        for j in range(k):
            yield i, j, slice(i, i + stride * (h - 1) + 1, stride), slice(j, j + stride * (w - 1) + 1, stride)


def _convolve(img, kernel, stride: int = 1, pad: int = 0):
    """An NHWC image `(n, H, W, C_in)` cross-correlated by an HWIO kernel `(k, k, C_in, C_out)`,
    zero padding `pad`, output stride `stride`.

    One matrix product of the `k²` shifted (strided) views of the image, side by side, with the
    kernel's `(k²·C_in, C_out)` matrix (im2col): faster than `lax.conv_general_dilated` on the
    CPU at this library's shapes (studies/benchmarks/RESULTS.md)."""
    k, _, c_in, c_out = kernel.shape
    img = jnp.pad(img, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h, w = (img.shape[1] - k) // stride + 1, (img.shape[2] - k) // stride + 1
    views = [img[:, rows, columns, :] for _, _, rows, columns in _taps(k, stride, h, w)]
    return jnp.concatenate(views, axis=-1) @ kernel.reshape(k * k * c_in, c_out)


def _convolve_transpose(img, kernel, size: tuple[int, int], stride: int = 1, pad: int = 0):
    """The adjoint of :func:`_convolve` (same kernel, stride and padding) in its image: an NHWC
    `(n, h, w, C_out)` → `(n, H, W, C_in)`, `size = (H, W)` the convolved image's side.

    One matrix product by the kernel's transposed matrix gives each position's `k×k×C_in`
    contribution, and the `k²` shifted copies are added at their places (col2im), without the
    zeros that a dilated convolution would multiply."""
    k, _, c_in, c_out = kernel.shape
    n, h, w, _ = img.shape
    cols = (img @ kernel.reshape(k * k * c_in, c_out).T).reshape(n, h, w, k, k, c_in)
    # the padded image; rows and columns a stride leaves over get nothing back
    out = jnp.zeros((n, size[0] + 2 * pad, size[1] + 2 * pad, c_in), img.dtype)
    for i, j, rows, columns in _taps(k, stride, h, w):
        out = out.at[:, rows, columns, :].add(cols[:, :, :, i, j, :])
    return out[:, pad : pad + size[0], pad : pad + size[1], :]


def _pooled_kernel(kernel, pool: int):
    """`K' = K ⊛ box_p / p²` (size k + p − 1): stride-p conv by K' = avgpool_p ∘ conv by K."""
    if pool == 1:
        return kernel
    total = 0.0
    for i in range(pool):
        for j in range(pool):
            total = total + jnp.pad(kernel, ((i, pool - 1 - i), (j, pool - 1 - j), (0, 0), (0, 0)))
    return total / (pool * pool)


class ConvNetwork(AbstractRateNetwork, strict=True):
    """Convolutional layers with untied transposed-convolution feedback, and a dense output.

    `Wf = (K_1, …, K_C, W_L)`: conv kernels `(k, k, C_{l−1}, C_l)` (HWIO) and the output matrix
    `(n_out, n_C)`. `Wb = (G_1, …, G_{C−1}, V_C)`: `G_l` shaped like `K_{l+1}`, applied by the
    transposed convolution, and `V_C` shaped like `W_Lᵀ`. `b`: per-map biases `(C_l,)` and the
    output's `(n_out,)`. Inputs are flat rows `(batch, H·W·C_in)` in the `layout` order (a
    single-channel image is the same row either way).
    """

    Wf: tuple[Float[Array, "..."], ...]
    Wb: tuple[Float[Array, "..."], ...]
    b: tuple[Float[Array, " n"], ...]
    sizes: tuple[int, ...] = eqx.field(static=True)
    maps: tuple[tuple[int, int, int], ...] = eqx.field(static=True)
    kernels: tuple[int, ...] = eqx.field(static=True)
    pool: int = eqx.field(static=True)
    pooling: str = eqx.field(static=True)
    pool_temperature: float = eqx.field(static=True)
    padding: int = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    layout: str = eqx.field(static=True)

    def __init__(
        self,
        input_shape=(28, 28, 1),
        channels=(32, 64),
        kernels=(5, 5),
        n_out: int = 10,
        activation: str = "hard_sigmoid",
        *,
        key: PRNGKeyArray,
        pool: int = 2,
        pooling: str = "average",
        pool_temperature: float = 0.3,
        padding: int = 0,
        feedback: str | float = "random",
        layout: str = "NHWC",
        dtype=None,
    ):
        """Glorot-initialised kernels and matrices, zero biases.

        `input_shape`: `(H, W, C_in)`. `channels`, `kernels`: feature maps and kernel side of
        each conv layer. `pool`: side of the pooling blocks after each convolution (1: none);
        `pooling`: "average" or "max", the latter smoothed at `pool_temperature` (see the
        module's docstring). `feedback`: "random" (independent Glorot draws, the default),
        "transpose" (`G_l = K_{l+1}`, `V_C = W_Lᵀ` at initialisation only) or an angle in
        degrees between each feedback array and its forward counterpart. `layout`: "NHWC" or "NCHW", how the
        feature maps are laid out in the flat state and convolved (a speed choice).
        """
        get_activation(activation)
        if not (feedback in ("random", "transpose") or isinstance(feedback, (int, float))):
            raise ValueError(f"feedback={feedback!r} must be 'random', 'transpose' or an angle in degrees")
        if layout not in LAYOUTS:
            raise ValueError(f"layout={layout!r} must be one of {LAYOUTS}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r} must be one of {POOLINGS}")
        if not pool_temperature > 0:
            raise ValueError(f"pool_temperature={pool_temperature!r} must be > 0 (hard max pooling "
                             "makes the feedback jump and the dynamics lose their fixed point)")
        pool, padding, n_out = int(pool), int(padding), int(n_out)
        if n_out < 1:
            raise ValueError(f"n_out={n_out!r} must be ≥ 1")
        maps = conv_maps(input_shape, channels, kernels, pool, padding)
        kernels = tuple(int(k) for k in kernels)
        dtype = jnp.float32 if dtype is None else dtype
        n_conv = len(kernels)
        kf, kb = jr.split(key)
        kfs, kbs = jr.split(kf, n_conv + 1), jr.split(kb, n_conv)
        Wf = [_glorot_kernel(kfs[l], (k, k, maps[l][2], maps[l + 1][2]), dtype) for l, k in enumerate(kernels)]
        n_last = math.prod(maps[-1])
        Wf.append(_glorot(kfs[-1], (n_out, n_last), dtype))
        Wb = []
        for l in range(n_conv):
            reference = Wf[l + 1] if l + 1 < n_conv else Wf[l + 1].T
            if feedback == "random":
                draw = _glorot_kernel if reference.ndim == 4 else _glorot
                Wb.append(draw(kbs[l], reference.shape, dtype))
            elif feedback == "transpose":
                Wb.append(reference)
            else:
                Wb.append(_at_angle(kbs[l], reference, float(feedback), dtype))
        self.Wf, self.Wb = tuple(Wf), tuple(Wb)
        self.b = tuple(jnp.zeros((m[2],), dtype) for m in maps[1:]) + (jnp.zeros((n_out,), dtype),)
        self.sizes = tuple(math.prod(m) for m in maps) + (n_out,)
        self.maps = tuple(maps)
        self.kernels, self.pool, self.padding = kernels, pool, padding
        self.pooling = pooling if pool > 1 else "average"  # one position per block: no switches
        self.pool_temperature = float(pool_temperature)
        self.activation, self.layout = activation, layout

    # -- layout helpers

    def _image(self, flat, l: int):
        """Layer `l`'s flat rows `(batch, n_l)` as feature maps in the network's layout."""
        h, w, c = self.maps[l]
        shape = (h, w, c) if self.layout == "NHWC" else (c, h, w)
        return flat.reshape(flat.shape[:1] + shape)

    def _flat_bias(self, l: int):
        """Layer `l`'s per-map bias spread over its positions, in the flat state's order."""
        h, w, c = self.maps[l]
        b = self.b[l - 1]
        full = jnp.broadcast_to(b, (h, w, c)) if self.layout == "NHWC" else jnp.broadcast_to(b[:, None, None], (c, h, w))
        return full.reshape(-1)

    def _forward(self, rates, l: int, kernel):
        """`F_l`: layer `l−1`'s rates (flat) → layer `l`'s drive (flat), `kernel` pooled already."""
        img = self._to_nhwc(self._image(rates, l - 1))
        return self._flat(_convolve(img, kernel, self.pool, self.padding))

    def _backward(self, rates, l: int, kernel):
        """`F_{l+1}(·; G)ᵀ`: layer `l+1`'s rates (flat) → layer `l` (flat), `kernel` pooled already."""
        img = self._to_nhwc(self._image(rates, l + 1))
        return self._flat(_convolve_transpose(img, kernel, self.maps[l][:2], self.pool, self.padding))

    # -- smooth max pooling: stride-1 convolutions, routing weights read from the forward drive

    def _to_nhwc(self, img):
        """A feature-map image in the network's layout as NHWC."""
        return img if self.layout == "NHWC" else img.transpose(0, 2, 3, 1)

    def _from_nhwc(self, img):
        """An NHWC image in the network's layout."""
        return img if self.layout == "NHWC" else img.transpose(0, 3, 1, 2)

    def _conv_full(self, rates, l: int, kernel):
        """Layer `l−1`'s rates (flat) convolved at stride 1 by `kernel`, as an NHWC image
        `(batch, H_c, W_c, C_l)` (before pooling)."""
        return _convolve(self._to_nhwc(self._image(rates, l - 1)), kernel, 1, self.padding)

    def _blocks(self, full):
        """An NHWC image `(n, p·h, p·w, c)` as its pooling blocks `(n, h, w, c, p·p)`."""
        n, hp, wp, c = full.shape
        p = self.pool
        blocks = full.reshape(n, hp // p, p, wp // p, p, c).transpose(0, 1, 3, 5, 2, 4)
        return blocks.reshape(n, hp // p, wp // p, c, p * p)

    def _unblocks(self, blocks):
        """The inverse of :meth:`_blocks`: `(n, h, w, c, p·p)` → the NHWC image `(n, p·h, p·w, c)`."""
        n, h, w, c, _ = blocks.shape
        p = self.pool
        return blocks.reshape(n, h, w, c, p, p).transpose(0, 1, 4, 2, 5, 3).reshape(n, h * p, w * p, c)

    def _flat(self, nhwc):
        """An NHWC image back to flat rows in the network's layout."""
        return self._from_nhwc(nhwc).reshape(nhwc.shape[0], -1)

    def _max_forward(self, rates, l: int, kernel):
        """`F_l` with smooth max pooling: layer `l`'s drive (flat), `τ·log mean exp(y/τ)` over each
        block of `y = conv(rates, kernel)`, and the block's softmax weights `(batch, h, w, C_l, p·p)`
        (the derivative of that drive by `y`), which route the feedback."""
        blocks = self._blocks(self._conv_full(rates, l, kernel)) / self.pool_temperature
        weights = jax.nn.softmax(blocks, axis=-1)
        # log-mean-exp: between the block's mean (τ → ∞) and its maximum (τ → 0)
        pooled = jax.nn.logsumexp(blocks, axis=-1) - math.log(blocks.shape[-1])
        return self._flat(self.pool_temperature * pooled), weights

    def _max_backward(self, rates, l: int, kernel, weights):
        """`B_l` with smooth max pooling: layer `l+1`'s rates (flat) spread over each block by the
        forward drive's softmax weights, then the stride-1 transposed convolution by the feedback
        kernel (unpooled) → layer `l` (flat)."""
        r = self._to_nhwc(self._image(rates, l + 1))
        up = self._unblocks(r[..., None] * weights)
        return self._flat(_convolve_transpose(up, kernel, self.maps[l][:2], 1, self.padding))

    # -- AbstractDynamics

    def init_state(self, x):
        return tuple(jnp.zeros((x.shape[0], n), self.b[0].dtype) for n in self.sizes[1:])

    def drive(self, x):
        """`(F₁(ρ(x)) + b₁, b₂, …)` flat, and the kernels prepared once per phase: each conv
        kernel smoothed by the pooling box (average pooling), each feedback kernel too, the
        dense matrices transposed (row-major products in the loop)."""
        rho = get_activation(self.activation)
        n_conv = len(self.kernels)
        if self.pooling == "max":  # stride-1 kernels as they are; the routing comes per step
            fwd = tuple(self.Wf[:n_conv])
            back = tuple(self.Wb[: n_conv - 1])
            first = self._max_forward(rho(x), 1, fwd[0])[0] + self._flat_bias(1)
        else:
            fwd = tuple(_pooled_kernel(k, self.pool) for k in self.Wf[:n_conv])
            back = tuple(_pooled_kernel(g, self.pool) for g in self.Wb[: n_conv - 1])
            first = self._forward(rho(x), 1, fwd[0]) + self._flat_bias(1)
        inputs = (first,) + tuple(self._flat_bias(l) for l in range(2, n_conv + 1)) + (self.b[-1],)
        return inputs, fwd, back, self.Wf[-1].T, self.Wb[-1].T

    def vector_field(self, state, drive):
        inputs, fwd, back, w_out_t, v_t = drive
        rho = get_activation(self.activation)
        rates = [rho(s) for s in state]
        n = len(state)  # n_conv conv layers and the output
        pooled = {}  # max pooling: conv layer index i ≥ 1 → (its drive, its routing weights)
        if self.pooling == "max":
            for i in range(1, n - 1):
                pooled[i] = self._max_forward(rates[i - 1], i + 1, fwd[i])
        mu = []
        for i in range(n):  # state index i is layer l = i + 1
            l = i + 1
            total = inputs[i]
            if i == n - 1:
                total = total + rates[i - 1] @ w_out_t
            elif i in pooled:
                total = total + pooled[i][0]
            elif i > 0:
                total = total + self._forward(rates[i - 1], l, fwd[i])
            if i == n - 2:
                total = total + rates[i + 1] @ v_t
            elif i + 1 in pooled:
                total = total + self._max_backward(rates[i + 1], l, back[i], pooled[i + 1][1])
            elif i < n - 2:
                total = total + self._backward(rates[i + 1], l, back[i])
            mu.append(total - state[i])
        return tuple(mu)


    def feedback_references(self) -> tuple:
        """The forward array each feedback array `Wb[i]` is compared with (weight alignment):
        `K_{l+1}` for a conv feedback kernel `G_l`, `W_Lᵀ` for the dense feedback."""
        n_conv = len(self.kernels)
        return tuple(self.Wf[i + 1] if i + 1 < n_conv else self.Wf[i + 1].T for i in range(n_conv))
