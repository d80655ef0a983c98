"""What a person's machine does to knock: build tokens from a client key, send them."""
