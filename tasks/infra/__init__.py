"""Infrastructure: storage (the only code that touches fsspec), retries and GPU slots, the dataset lease."""
