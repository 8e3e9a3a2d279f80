"""Training loops (library code; the CLI and scripts call into these)."""
