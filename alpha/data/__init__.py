"""Data: tokenizers, corpus reading and splitting, the token cache and batches."""
