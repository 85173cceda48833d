# gunicorn -c gunicorn.conf.py djangoapp.wsgi
import os

bind = os.environ.get("DJANGOAPP_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("DJANGOAPP_WORKERS", "2"))
# Load Django once, in the arbiter (gunicorn's master process), before it forks the workers:
# Django's AppConfig.ready() then starts the rpcctl agent there, once for the whole server,
# and a worker never inherits it. Without preload, each worker loads Django; keep one worker
# then (the agent lives in it), or every worker but the first finds the node taken.
preload_app = os.environ.get("DJANGOAPP_PRELOAD", "1") == "1"
# gunicorn 25+ opens a control socket per user (~/.gunicorn/gunicorn.ctl), which replicas on
# one host would share; the example does not use it. (Older versions ignore the name.)
control_socket_disable = True
