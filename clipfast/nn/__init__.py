"""Modules that own parameters (OpenCLIP names) and call ``clipfast.ops`` only."""
