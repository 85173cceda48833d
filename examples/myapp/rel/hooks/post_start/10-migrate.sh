#!/bin/sh
# post_start: runs after myapp's agent answers ping. Applies the database migrations
# inside the running app. A non-zero exit stops the app (the post_start policy is "stop"),
# so a release whose migrations fail never serves traffic.
set -eu
# The runner has already seen a ping; this also makes the script safe to run by hand.
"$RPCCTL" ping --wait 30 >/dev/null
echo "migrating myapp (pid ${RPCCTL_APP_PID:-?})"
"$RPCCTL" rpc myapp.tasks.migrate
