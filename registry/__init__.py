"""Local content-addressed store and OCI distribution (the only package that imports oras)."""
