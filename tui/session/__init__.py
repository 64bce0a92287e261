"""asyncio glue that drives the sans-I/O cores with real sockets, files and time.

``Session`` (in ``service``) is the one facade the CLI and the TUI talk to."""
