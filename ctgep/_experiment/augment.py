"""Training-set augmentation: random translations of square images, inside the jitted step.

The paper trains on the plain images. Shifting each training image by a pixel or two, afresh at
every step, is the classic way to make a fully connected MNIST network generalise better; it
changes the data, not the dynamics or the learning rule, so a run that uses it says so in its
card (`data.shift`). Evaluation always sees the plain images.
"""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray


def image_side(n_features: int) -> int:
    """The side of the square images flattened into `n_features` pixels (ValueError if none)."""
    side = math.isqrt(n_features)
    if side * side != n_features:
        raise ValueError(f"{n_features} features are not a square image")
    return side


def shift_images(key: PRNGKeyArray, x: Float[Array, "batch pixels"], max_shift: int) -> Float[Array, "batch pixels"]:
    """Translate each row of `x` (a flattened square image) by a random whole number of pixels.

    The vertical and horizontal offsets are drawn independently and uniformly from
    `−max_shift … max_shift`; pixels moved in from outside the image are 0 (background).
    """
    if max_shift == 0:
        return x
    b, n = x.shape
    side = image_side(n)
    k = int(max_shift)
    padded = jnp.pad(x.reshape(b, side, side), ((0, 0), (k, k), (k, k)))
    corners = jr.randint(key, (b, 2), 0, 2 * k + 1)
    crop = lambda img, c: jax.lax.dynamic_slice(img, (c[0], c[1]), (side, side))
    return jax.vmap(crop)(padded, corners).reshape(b, n)
