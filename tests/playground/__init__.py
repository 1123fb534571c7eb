"""The Playground: its routes and its page in a browser."""
