"""dynroute."""
