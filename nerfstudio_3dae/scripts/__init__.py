"""Command-line entry points (``ns-3dae-*``)."""
