"""Loaded versions and how traffic reaches them."""
