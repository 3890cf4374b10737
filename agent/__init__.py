"""ferry agent: per-host Docker volume plugin (not implemented yet, see issue 3)."""
