"""KV-cache recovery under eviction and migration: strategies (client), operations (server), benchmark runner."""
