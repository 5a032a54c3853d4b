"""nerfstudio-3dae: many scenes of one kind as tri-planes in the 3D-aware latent space of an image autoencoder.

Data flow: ``data`` (layout, generator, converters, dataparser) → ``autoencoder`` → ``triplanes`` → ``rendering``
→ model → pipeline → method configs.
"""

__version__ = "0.1.0"
