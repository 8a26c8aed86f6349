"""work stage."""
