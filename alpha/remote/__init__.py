"""Client side of the dashboard server: the HTTP client, ingest payloads, the spool, uploads, replay."""
