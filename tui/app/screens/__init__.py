"""Screens hold the logic; widgets only show."""
