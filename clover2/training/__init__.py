"""Training a head by distillation: the loop, the teacher (online or cached), ShareGPT
conversations and the target's own answers."""
