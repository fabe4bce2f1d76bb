"""What a run plans and records: the catalog, the incremental plan, the manifest, the typed configuration."""
