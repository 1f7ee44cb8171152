"""Models: timm encoders, heads, losses and the Lightning task that joins them."""
