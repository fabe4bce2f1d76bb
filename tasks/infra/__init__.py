"""Infrastructure: storage (store, s3_listing, file_info, options, redaction, errors, weight_cache: the only
code that touches fsspec), shard-task retries and GPU slots (runtime), the dataset lease."""
