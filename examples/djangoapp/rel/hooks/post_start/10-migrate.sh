#!/bin/sh
# post_start: runs after djangoapp's agent answers ping. Applies Django's migrations inside
# the running site (its own settings, its own database connection); a failure stops the app.
set -eu
echo "migrating djangoapp (pid ${RPCCTL_APP_PID:-?})"
# --lock-wait: replicas sharing a PostgreSQL database share the migrations lock; one
# migrates, the others wait for it and then find nothing left to do.
"$RPCCTL" rpc --lock-wait 300 django.migrate
