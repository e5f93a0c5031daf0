"""Interop with PyTorch checkpoints (the authors' LCL, open_clip) without importing torch."""
