"""dmforge: Markdown D&D scenarios in, an on-device Dungeon Master model for Cactus out."""

__version__ = "0.1.0"
