"""The inference patterns, each a small module over the core."""
