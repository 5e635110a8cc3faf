"""Placeholder: smp encoder registration, being written."""
