"""The feature-map shapes of a :class:`~ctgep.ConvNetwork`, in plain Python (no JAX), so that
model cards can check a convolutional network's layer widths without importing JAX."""

__all__ = ["conv_maps", "conv_sizes"]


def conv_maps(input_shape, channels, kernels, pool: int = 2, padding: int = 0) -> list[tuple[int, int, int]]:
    """The `(H, W, C)` of every feature map, input first; ValueError if a layer does not fit.

    Each conv layer maps `H` to `(H + 2·padding − k + 1) / pool`, which must be a whole number ≥ 1.
    """
    h, w, c = (int(a) for a in input_shape)
    channels, kernels = [int(a) for a in channels], [int(a) for a in kernels]
    if len(channels) < 1 or len(channels) != len(kernels):
        raise ValueError(f"channels={channels} and kernels={kernels} need one entry per conv layer "
                         "(at least one)")
    if any(a < 1 for a in channels + kernels) or pool < 1 or padding < 0 or min(h, w, c) < 1:
        raise ValueError("channels, kernels, pool and the input shape must be ≥ 1, padding ≥ 0")
    maps = [(h, w, c)]
    for l, (ch, k) in enumerate(zip(channels, kernels), start=1):
        if padding > k - 1:
            raise ValueError(f"padding={padding} exceeds kernel {k} − 1 at conv layer {l}")
        hc, wc = h + 2 * padding - k + 1, w + 2 * padding - k + 1
        if hc < pool or wc < pool or hc % pool or wc % pool:
            raise ValueError(f"conv layer {l}: a {h}×{w} map convolved by {k}×{k} (padding {padding}) "
                             f"is {hc}×{wc}, which {pool}×{pool} pooling does not tile")
        h, w, c = hc // pool, wc // pool, ch
        maps.append((h, w, c))
    return maps


def conv_sizes(input_shape, channels, kernels, n_out: int, pool: int = 2, padding: int = 0) -> list[int]:
    """The flat layer widths (input, each feature map, output) of a :class:`ConvNetwork`."""
    return [h * w * c for h, w, c in conv_maps(input_shape, channels, kernels, pool, padding)] + [int(n_out)]
