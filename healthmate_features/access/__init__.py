"""Who may do what, and the record of what was done.

API keys with roles (`keys`), the append-only audit log (`audit`).
"""
