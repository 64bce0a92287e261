"""The Textual desk: consult list, consult view, status line, help.

Frugal by construction: nothing animates or ticks while nothing changes (times are shown as
clock times, not "3 s ago"), mouse reporting is off unless asked for, and the app redraws
only the widgets whose content changed, because over SSH on EDGE every redraw is uplink.
"""
