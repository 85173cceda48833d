#!/bin/sh
# pre_stop: the app is still up, so this can still rpc it: record its state before it stops.
set -eu
echo "stopping $RPCCTL_APP (pid $RPCCTL_APP_PID); its last status:"
"$RPCCTL" rpc myapp.tasks.status
