"""What task runs do: the shard engine (one pass over a shard), its worker processes and models, the Prefect tasks of the flows, the paired cloth."""
