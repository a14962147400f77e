"""visio-matrix: sovereign video calls next to a Matrix homeserver.

The package is layered: pure parsing/decision code (config, signaling, calls logic) below,
thin asyncio shells (appservice HTTP, bot, relay) above, and one composition root, ``app.py``.
"""

__version__ = "0.1.0"
