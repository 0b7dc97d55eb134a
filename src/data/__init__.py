"""Tokenizer loading, data sources, packing and the DataModules."""
