"""Benchmarks of the 3dae building blocks, run through ``ns-3dae-bench`` (:mod:`nerfstudio_3dae.scripts.bench`).

* :mod:`nerfstudio_3dae.bench.scaling`: cost of a latent-space training step against the number of scenes, with
  row-sparse gradients and :class:`~nerfstudio_3dae.sparse_adam.RowSparseAdam` beside the dense reference.
"""
