"""The medcomm relay: authentication, consults and membership, the durable message log,
and fan-out to connected members. It reads envelopes, never bodies."""
