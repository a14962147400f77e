"""MCU path of the relay: for endpoints that take one audio and one video stream, decode each
publisher once, mix everyone's audio except the endpoint's own and compose a grid of the others'
pictures; aiortc encodes the result per endpoint. See `session.McuSession`."""

from .levels import dbov, to_rfc6464
from .session import McuSession, McuStats

__all__ = ["McuSession", "McuStats", "dbov", "to_rfc6464"]
