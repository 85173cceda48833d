#!/bin/sh
# post_stop: the app is gone; its agent no longer answers.
set -eu
if "$RPCCTL" ping >/dev/null 2>&1; then
    echo "$RPCCTL_APP still answers at $RPCCTL_NODE" >&2
    exit 1
fi
echo "$RPCCTL_APP stopped; nothing answers at $RPCCTL_NODE"
