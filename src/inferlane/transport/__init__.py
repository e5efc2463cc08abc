"""Transports: parse, call a lane, map errors. No business logic lives here."""
