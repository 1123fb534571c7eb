"""Helpers shared by the integration tests: external services and the shop data set."""
