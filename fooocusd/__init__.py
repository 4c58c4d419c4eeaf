"""fooocusd: a watch-folder daemon for local SDXL image generation."""

__version__ = "0.1.0"
