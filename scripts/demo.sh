#!/bin/sh
# The seed story, the way an Erlang release tells it: `bin/myapp start` starts the example app
# and, once its agent answers ping, a post_start hook migrates the database inside the live
# process; `bin/myapp rpc ...` talks to it; `bin/myapp stop` runs the stop hooks. Then, with
# the app down, `bin/myapp eval ...` runs release tasks in a fresh process, as an Elixir
# release's `bin/app eval` does (a Kubernetes migration Job, an init container).
# Run it with ./dev demo (which puts rpcctl and python on PATH).
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
APP="$ROOT/examples/myapp"
BIN="$APP/bin/myapp"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rpcctl-demo.XXXXXX")
LOG="$WORK/runner.log"
# A fresh database for every run, and any free port for the app's HTTP side.
export DATABASE_URL="sqlite:///$WORK/myapp.db"
export MYAPP_HTTP=127.0.0.1:0
RUNNER_PID=""

cleanup() {
    if [ -n "$RUNNER_PID" ] && kill -0 "$RUNNER_PID" 2>/dev/null; then
        kill -TERM "$RUNNER_PID" 2>/dev/null || true
        wait "$RUNNER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then
    say() { printf '\n\033[1m# %s\033[0m\n' "$*"; }
else
    say() { printf '\n# %s\n' "$*"; }
fi
# Show commands as a user in examples/myapp would type them.
run() { printf '$ %s\n' "$(printf '%s' "$*" | sed "s|$APP/||")"; "$@"; }
# Print the hook output and runner events logged since line $1 of the runner's JSON log.
show_log() {
    python - "$LOG" "$1" <<'PY'
import json, sys
path, skip = sys.argv[1], int(sys.argv[2])
for line in open(path).read().splitlines()[skip:]:
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("event") == "hook.output":
        print(f"   [{e['hook']}] {e['line']}")
    elif e.get("event", "").startswith(("runner.", "hook.finished", "hook.failed")):
        extra = {k: v for k, v in e.items() if k not in ("event", "level", "timestamp", "app", "command")}
        print(f"   {e['event']} {json.dumps(extra)}")
PY
}
log_lines() { wc -l < "$LOG" | tr -d ' '; }

say "1. Start the release in the background: pre_start hooks, the app, then post_start hooks."
printf '$ %s start &\n' "bin/myapp"
"$BIN" start 2>"$LOG" &
RUNNER_PID=$!

say "2. Wait until the app's agent answers (backoff, no busy loop; exit 3 after 15 s)."
run "$BIN" ping --wait 15

# The post_start hook runs right after that first ping; wait for the runner to finish it.
i=0
until grep -q '"runner.supervising"' "$LOG" || grep -q '"runner.stopped"' "$LOG"; do
    i=$((i + 1)); [ "$i" -lt 150 ] || { echo "the runner never finished starting" >&2; exit 1; }
    sleep 0.1
done
say "3. What the runner did: the post_start hook ran myapp.tasks.migrate inside the app."
show_log 0

say "4. The new schema revision, asked of the live app."
run "$BIN" rpc myapp.tasks.current

say "5. Migrate by hand too, the Erlang 'bin/app rpc ReleaseTasks.migrate': Alembic's own output
   streams back while it runs; nothing is left to do, so the result is an empty list."
run "$BIN" rpc myapp.tasks.migrate

say "6. The migrated table at work: seed it through rpc (its progress and output stream back too),
   then read it over HTTP."
run "$BIN" rpc myapp.tasks.seed
URL=$("$BIN" rpc myapp.tasks.status --json | python -c 'import json,sys; print(json.loads(sys.stdin.read().splitlines()[-1])["result"]["http"])')
printf '$ GET %s/notes\n' "$URL"
python -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' "$URL/notes"

say "7. Bad input gets one clear line and its exit code; the app keeps serving."
printf '$ bin/myapp rpc %s\n' "'myapp.tasks.rollback(os.system(\"id\"))'"
"$BIN" rpc 'myapp.tasks.rollback(os.system("id"))' || echo "   -> exit $?"
printf '$ bin/myapp rpc %s\n' "'myapp.tasks.rollback(1, 2)'"
"$BIN" rpc 'myapp.tasks.rollback(1, 2)' || echo "   -> exit $?"
run "$BIN" rpc myapp.tasks.nope || echo "   -> exit $?"
run "$BIN" ping

say "8. Stop it: pre_stop hooks (the app still answers), SIGTERM, post_stop hooks."
before=$(log_lines)
run "$BIN" stop
status=0
wait "$RUNNER_PID" || status=$?
RUNNER_PID=""
show_log "$before"
echo "   the runner exited with status $status"
run "$BIN" ping || echo "   -> exit $? (unreachable, as expected)"

say "9. With the app down, eval runs a registered task in a fresh process of the release (no
   agent, no socket): roll back one migration, then migrate again by its alias (found through
   [app] tasks in rpcctl.toml). Output and results are rpc's; the lock is the app's too."
run "$BIN" eval myapp.tasks.current
run "$BIN" eval 'myapp.tasks.rollback(1)'
run "$BIN" eval migrate

say "10. eval runs registered tasks only, never any function; and it started no app."
run "$BIN" eval myapp.db.engine || echo "   -> exit $?"
run "$BIN" ping || echo "   -> exit $? (still unreachable: eval started no agent)"
