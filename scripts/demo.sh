#!/bin/sh
# The seed story: start the example app, wait for its agent, run its migrate task inside the
# live process with `rpcctl rpc`, and show the new schema at work. Run it with ./dev demo.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rpcctl-demo.XXXXXX")
export RPCCTL_NODE="unix:$WORK/run/myapp.sock"
APP_PID=""

cleanup() {
    if [ -n "$APP_PID" ] && kill -0 "$APP_PID" 2>/dev/null; then
        kill -TERM "$APP_PID" 2>/dev/null || true
        wait "$APP_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then
    say() { printf '\n\033[1m# %s\033[0m\n' "$*"; }
else
    say() { printf '\n# %s\n' "$*"; }
fi
run() { printf '$ %s\n' "$*"; "$@"; }

say "1. Start the example app (an HTTP notes service with the agent embedded)."
echo "   working directory $WORK; its database is SQLite at var/myapp.db; logs in app.log"
(cd "$WORK" && PYTHONPATH="$ROOT/examples/myapp" MYAPP_HTTP=127.0.0.1:0 \
    exec python -m myapp 2>"$WORK/app.log") &
APP_PID=$!
echo "   app pid $APP_PID, agent at $RPCCTL_NODE"

say "2. Wait until its agent answers (retries with backoff, gives up after 10 s with exit 3)."
run rpcctl ping --wait 10

say "3. The release tasks the app registered."
run rpcctl tasks

say "4. The schema before: no revision applied yet, so the notes endpoint is not ready."
run rpcctl rpc myapp.tasks.current
URL=$(rpcctl rpc myapp.tasks.status --json | python -c 'import json,sys; print(json.load(sys.stdin)["result"]["http"])')
printf '$ GET %s/notes\n' "$URL"
python - "$URL/notes" <<'PY'
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(sys.argv[1]).read().decode())
except urllib.error.HTTPError as exc:
    print(exc.code, exc.read().decode())
PY

say "5. Run the migrations inside the live app: the Erlang 'bin/app rpc ReleaseTasks.migrate'."
run rpcctl rpc myapp.tasks.migrate

say "6. The new schema revision, and a second migrate, which has nothing left to do."
run rpcctl rpc myapp.tasks.current
run rpcctl rpc --json myapp.tasks.migrate

say "7. The migrated table at work: seed it through rpc, then read it over HTTP."
run rpcctl rpc myapp.tasks.seed
printf '$ GET %s/notes\n' "$URL"
python -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' "$URL/notes"

say "8. Bad input is refused with a clear message and its exit code; the app keeps serving."
printf '$ rpcctl rpc %s\n' "'myapp.tasks.migrate(os.system(\"id\"))'"
rpcctl rpc 'myapp.tasks.migrate(os.system("id"))' || echo "   -> exit $?"
run rpcctl rpc myapp.tasks.nope || echo "   -> exit $?"
run rpcctl ping

say "9. Stop the app (SIGTERM): the agent closes and removes its socket."
kill -TERM "$APP_PID"
wait "$APP_PID" || true
APP_PID=""
run rpcctl ping || echo "   -> exit $? (unreachable, as expected)"
echo
echo "Done. The app's own log (structlog JSON, one line per call):"
tail -n 5 "$WORK/app.log"
