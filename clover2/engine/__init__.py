"""The decoding engine: the loop, the drafter protocol, trees, verification and its kernels.

It knows nothing of heads, training or reporting (tests/test_layers.py checks): a drafter is
anything that follows `clover2.engine.drafter.Drafter`."""
