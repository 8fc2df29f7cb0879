"""Per-customer features: the pure state and math, and the Redis store that applies them."""
