"""The separate tools: dataset validation, the parser dataset converter, parser training."""
