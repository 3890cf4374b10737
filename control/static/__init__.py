"""The status page's HTML, script and style (control/web.py serves them)."""
