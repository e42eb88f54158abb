"""The C runtime compiled into every sparsec library (shipped as package data)."""
