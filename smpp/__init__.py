"""smpp package."""
