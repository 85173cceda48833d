#!/bin/sh
# pre_start: runs before the app starts (no RPCCTL_APP_PID yet). A failure here keeps it down.
set -eu
echo "starting $RPCCTL_APP from $RPCCTL_ROOT; its agent will listen at $RPCCTL_NODE"
