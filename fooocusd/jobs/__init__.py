"""Turning dropped files into validated job specs."""
