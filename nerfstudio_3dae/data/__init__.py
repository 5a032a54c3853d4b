"""Multi-scene data: the on-disk layout, the procedural generator, the SRN converter and the ``3dae-scenes``
dataparser."""
