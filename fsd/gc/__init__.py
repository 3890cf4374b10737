"""Garbage collection: the pure rules (`plan`) and the store pass (`run`)."""
