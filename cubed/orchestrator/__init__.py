"""The query orchestrator: refresh keys, result cache, queue."""
