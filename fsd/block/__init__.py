"""The kernel side of block volumes: an image file on a ferry mount, a loop
device over it and a kernel filesystem on top (`stack`).

May import: the ground.
"""
__all__ = ["stack"]
