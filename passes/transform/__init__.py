"""Transform passes: they return a new network (exact: same function on the domain; lossy: within a budget)."""
