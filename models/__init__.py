"""Shipped models: one folder per model with its files, manifest.json and model card (README.md here).

Data only; imports nothing.
"""
