"""receive stage."""
