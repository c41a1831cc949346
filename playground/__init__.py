"""Transformer Playground: the Transformer of "Attention Is All You Need", to read, run and change."""
