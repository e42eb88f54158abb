"""The fuse pass's rules, by what they fuse, and the engine that applies them."""
