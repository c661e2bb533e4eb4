"""Database adapters, found by the core through the `cdc.adapters` entry-point group."""
