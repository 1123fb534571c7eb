"""The HTTP API: Klein routes on a class, auth, error mapping, health."""
