"""Peers Fanout is measured against: small apps written here, NOT part of Fanout."""
