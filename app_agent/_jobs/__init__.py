"""Running tasks: the job table, one job's life and output, capture of what tasks print, release
locks and the durable history."""
