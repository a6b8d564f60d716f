"""Analysis passes: they read a Network and return annotations, never touching weights."""
