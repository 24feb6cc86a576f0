"""Constants the tests share (fixtures that use them live in conftest.py)."""

COMPOUNDS = ("DMSO", "taxol", "nocodazole", "brefeldin")
MOA = {"DMSO": "control", "taxol": "microtubule", "nocodazole": "microtubule", "brefeldin": "golgi"}

TINY = {"hidden_size": 64, "num_layers": 1, "num_heads": 1, "intermediate_size": 128, "num_channels": 4,
        "pool_int_dim": 32}
"""Fields of the tiny test model's ``ModelConfig``."""
