"""vitforge's device runtime: an agent that fetches a registered edge package, verifies and proves it on the
device before it goes live, and an HTTP server that hot-swaps to it without failing a request."""

__version__ = "0.1.0"
