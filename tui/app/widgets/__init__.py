"""Widgets of the desk; each redraws only when its own content changes."""
