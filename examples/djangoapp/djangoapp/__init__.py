"""djangoapp: a small Django project whose live site runs its own migrations through rpcctl."""
