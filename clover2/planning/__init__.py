"""Trees chosen for this machine: its measured costs (costs), and the tree optimiser over them and a head's acceptance profile (optimiser)."""
