"""CLI command module (filled in by its stage)."""
