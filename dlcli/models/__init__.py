"""Model definitions, one family per file, each readable top to bottom."""
