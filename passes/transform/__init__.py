"""Transform passes: they return a new Network and log what they removed and why."""
