"""Pooling a token's wordpieces into one vector."""
from typing import Callable, Tuple

from thinc.api import Model
from thinc.types import Floats2d, Ragged


def first_or_zeros() -> Model[Ragged, Floats2d]:
    """Each token's first wordpiece, and zeros for a token with none.

    thinc's `reduce_first.v1` rejects empty sequences, but whitespace tokens (a double space, a
    line break in a report) get no wordpiece from the transformer, so raw text would crash it.
    """
    return Model("reduce_first_or_zeros", _forward)


def _forward(model: Model[Ragged, Floats2d], Xr: Ragged, is_train: bool) -> Tuple[Floats2d, Callable]:
    xp = model.ops.xp
    X = Xr.dataXd
    lengths = xp.asarray(Xr.lengths)
    nonempty = xp.nonzero(lengths)[0]
    firsts = (xp.cumsum(lengths) - lengths)[nonempty]
    Y = model.ops.alloc2f(len(lengths), X.shape[1])
    Y[nonempty] = X[firsts]

    def backprop(dY: Floats2d) -> Ragged:
        dX = model.ops.alloc2f(*X.shape)
        dX[firsts] = dY[nonempty]
        return Ragged(dX, Xr.lengths)

    return Y, backprop
