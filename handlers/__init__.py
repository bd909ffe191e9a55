"""Blueprints of views: thin (parse, call, shape)."""
