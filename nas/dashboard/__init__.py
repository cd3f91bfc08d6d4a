"""``python -m nas.dashboard [runs/]``: the Pareto dashboard over the run folders a search writes."""
