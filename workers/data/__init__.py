"""Small shipped datasets for the built-in tools."""
