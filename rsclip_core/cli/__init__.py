"""Command-line entry points: ``rsclip`` (main.py) and ``rsclip-map`` (map.py)."""
