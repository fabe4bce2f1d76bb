"""VITON-HD networks, data loading and training loops (PyTorch; no Prefect imports)."""
