"""clover2-bench: a reproducibility suite for lightweight speculative decoding."""

__version__ = "0.1.0"
