"""Adapters: the only code that touches the world (files, SQLite, sockets, devices)."""
