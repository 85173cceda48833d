"""Ready-made release tasks for common libraries."""
