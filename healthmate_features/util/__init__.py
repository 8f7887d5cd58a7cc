"""Small helpers every layer shares, each defined once: atomic file writes, SQL quoting, JSON values.

The lowest layer beside config and errors: nothing here imports the rest of the package.
"""
