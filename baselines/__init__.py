"""Baseline drafters and the reference decoders a user would otherwise pick."""
