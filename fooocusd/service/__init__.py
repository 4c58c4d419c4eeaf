"""The daemon: its loop, the worker, signals and logging."""
