#!/bin/sh
# post_start: runs after myapp's agent answers ping. Applies the database migrations
# inside the running app. A non-zero exit stops the app (the post_start policy is "stop"),
# so a release whose migrations fail never serves traffic.
set -eu
# The runner has already seen a ping; this also makes the script safe to run by hand.
"$RPCCTL" ping --wait 30 >/dev/null
echo "migrating myapp (pid ${RPCCTL_APP_PID:-?})"
# --lock-wait: with a lock backend shared by replicas, every replica can run this hook;
# one migrates, the others wait for it and then find nothing left to do.
"$RPCCTL" rpc --lock-wait 300 myapp.tasks.migrate
