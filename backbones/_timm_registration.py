"""Placeholder: timm registry registration, being written."""
