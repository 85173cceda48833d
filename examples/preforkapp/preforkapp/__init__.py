"""preforkapp: a WSGI app served by gunicorn's pre-fork workers, with the agent in the arbiter."""
