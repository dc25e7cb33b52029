"""Input sizes follow one convention: a sample shape (C, H, W), read from the data set (`Dataset.input_shape`).

Whatever runs a forward pass prepends the batch itself, so no signature carries a batch dimension or a 32x32
default: a model for 64x64 images is counted, pruned, timed and exported at 64x64.
"""

from collections.abc import Sequence


def batch_shape(input_shape: Sequence[int], batch_size: int) -> tuple[int, ...]:
    """(batch_size, C, H, W). Anything but a sample shape is refused here, where the mistake is plain, rather
    than surfacing as a convolution's shape error deep inside a trace."""
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise ValueError(f"input_shape is one sample's shape (C, H, W), e.g. (3, 32, 32); got {shape}")
    return (batch_size, *shape)
