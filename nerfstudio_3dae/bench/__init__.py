"""Benchmarks of 3dae, run through ``ns-3dae-bench`` (:mod:`nerfstudio_3dae.scripts.bench`), one module each:

* :mod:`~nerfstudio_3dae.bench.scaling`: a latent-space training step against the number of scenes (row-sparse
  against dense updates);
* :mod:`~nerfstudio_3dae.bench.compare`: 3dae-latent against RGB Tri-Planes on the same scenes, at equal budgets or
  each to its plateau (:mod:`~nerfstudio_3dae.bench.plateau`, :mod:`~nerfstudio_3dae.bench.convergence`), with the
  presets of :mod:`~nerfstudio_3dae.bench.presets` and the runs of :mod:`~nerfstudio_3dae.bench.measure`;
* :mod:`~nerfstudio_3dae.bench.quality`: where the decoded dB go, stage by stage, for each lever;
* :mod:`~nerfstudio_3dae.bench.reconstruction`: D(E(x)) of autoencoders on datasets' views;
* :mod:`~nerfstudio_3dae.bench.step_profile` and :mod:`~nerfstudio_3dae.bench.step_memory`: what one training step
  costs (time per phase, operators, host syncs; memory);
* :mod:`~nerfstudio_3dae.bench.skipping`: empty-space skipping with occupancy grids;
* :mod:`~nerfstudio_3dae.bench.finetune`: stage 3 re-tuned; :mod:`~nerfstudio_3dae.bench.memory`: memory per scene
  as the paper counts it.
"""
