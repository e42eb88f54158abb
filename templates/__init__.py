"""Jinja2 templates of C: the model skeleton and one family of kernels per folder."""
