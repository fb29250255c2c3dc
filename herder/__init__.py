"""herder: an asyncio service that herds containers for other programs."""

__version__ = "0.1.0"
