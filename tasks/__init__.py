"""Stages of the VITON-HD preprocessing: pure functions on arrays, plus thin Prefect tasks over shards."""
