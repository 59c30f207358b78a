"""Statistics and Plotly figures derived from the stores' aggregates (never from raw records)."""
