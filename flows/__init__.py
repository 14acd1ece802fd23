"""Bytewax dataflows. ``python -m bytewax.run flows.classify`` is the main job."""
