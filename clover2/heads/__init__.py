"""Trainable draft heads: their protocol and registry, the Clover-2 head, the draft vocabulary,
losses and the blocks heads share. The baselines' heads live in `baselines/`."""
