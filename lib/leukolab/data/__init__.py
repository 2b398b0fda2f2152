"""Datasets: the synthetic smear generator and loaders for ALL smear images."""
