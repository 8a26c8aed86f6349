"""Durable files: write atomically (temporary file, fsync, rename, directory fsync)."""
