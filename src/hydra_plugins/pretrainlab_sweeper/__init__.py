"""Hydra plugin package: Hydra only loads sweepers that live under ``hydra_plugins``."""
