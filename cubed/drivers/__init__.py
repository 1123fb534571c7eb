"""Database drivers: each returns Deferred results and never blocks the reactor."""
