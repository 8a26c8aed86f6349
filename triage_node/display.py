"""Pixels for display: the stored values of a radiograph windowed to what a viewer shows."""
