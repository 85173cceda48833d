"""The remote console (off unless the app turns it on)."""
