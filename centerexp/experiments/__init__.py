"""Experiments as data: the experiment file, reproduce, parity and bench."""
