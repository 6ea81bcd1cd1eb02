"""Sweeps over the paper's settings (``ols sweep``) and their reports (``ols report``)."""
