"""Separate densities for convolutional and fully connected layers, then int8.

Two open knobs (``conv_density``, ``linear_density``) let the search trade conv compute against
the classifier's parameters.
"""

from condensa import Compose, Prune, Quantize


def strategy(conv_density=0.1, linear_density=0.1, dtype="int8"):
    return Compose(
        [
            Prune(density=conv_density, layers=("Conv2d",), scope="global"),
            Prune(density=linear_density, layers=("Linear",), scope="global"),
            Quantize(dtype=dtype, layers=("Conv2d", "Linear")),
        ]
    )
