"""Typed HTTP clients of the services (magnifier, policy), shared by every caller."""
