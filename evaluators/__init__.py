"""Measurements of a built module: MACs (fvcore, torchprofile), parameters, quality, latency."""
