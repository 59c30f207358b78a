"""Statistics derived from the stores' aggregates (never from raw records): numbers and tables, never figures."""
