"""Policies: decisions about data (sync strategies, conflicts, quality rules, access)."""
