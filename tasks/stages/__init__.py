"""The stages: pure functions on numpy arrays and plain data, each declared once in `registry`."""
