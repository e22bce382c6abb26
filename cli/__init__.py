"""The `covidscan` command: HTTP client commands and operator commands (each imports lazily)."""
