"""Loading nerfstudio checkpoints on torch >= 2.6, where ``torch.load`` defaults to ``weights_only=True``.

nerfstudio 1.1.5 saves optimiser and scheduler state that holds numpy scalars (its exponential-decay scheduler
computes learning rates with numpy) and reloads with a plain ``torch.load``: ns-viewer, ns-eval, ns-render and
``--load-dir`` would raise ``UnpicklingError``. Allow-listing the numpy scalar reconstructors keeps the safe loader
(no arbitrary code) and asks no environment variable of the user. Called when a 3dae model module is imported.
"""

from __future__ import annotations

import numpy as np
import torch


def numpy_scalar_globals() -> list:
    """The globals a pickled numpy scalar needs: the scalar reconstructor and the dtype classes."""
    try:  # numpy >= 2
        from numpy._core.multiarray import scalar  # type: ignore[attr-defined]
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    dtype_classes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    return [scalar, np.dtype, *dtype_classes]


def allow_nerfstudio_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` read numpy scalars (a no-op on torch without safe globals)."""
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:
        add(numpy_scalar_globals())
