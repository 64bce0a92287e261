"""medcomm: terminal consults for clinics and remote doctors over links too poor for video.

The package is split so that the cheap parts import fast and without C libraries:
``core`` is sans-I/O, ``adapters`` touch the world, ``session`` drives both with asyncio,
and ``cli`` stays thin. ``medcomm.server`` is the relay.
"""

__version__ = "0.1.0"
