"""Shipped models: one folder per model with its files and manifest.json (see README.md here)."""
