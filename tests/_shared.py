"""Constants the tests share (fixtures that use them live in conftest.py)."""

COMPOUNDS = ("DMSO", "taxol", "nocodazole", "brefeldin")
MOA = {"DMSO": "control", "taxol": "microtubule", "nocodazole": "microtubule", "brefeldin": "golgi"}

TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "num_channels": 4,
        "pool_int_dim": 16}
"""A SubCell architecture small enough to embed a demo plate in seconds."""
SMALL = {"out_size": 32}
"""Crops small enough for the tiny model (the physical crop stays the preset's)."""
