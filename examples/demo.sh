#!/usr/bin/env bash
# The demo of `make demo`, in two scenes, each ending with graceshell's report:
#
# 1. A clean stop, the way Heroku stops a dyno: SIGTERM, with 30 s before the
#    platform's SIGKILL (graceshell's budget: 25 s). The job in hand finishes,
#    the worker exits 0, its leftover helper is cleaned up.
# 2. A job too long for the budget, the way `docker stop -t 4` stops a
#    container: SIGTERM, SIGKILL 4 s later. The worker would wait for its 60 s
#    job, so graceshell KILLs the whole tree at its budget (3.2 s), before
#    the platform does, and the report names the job that died with it.
set -u
cd "$(dirname "$0")/.."
graceshell=${GRACESHELL:-.venv/bin/graceshell}
python=${PYTHON:-$(dirname "$graceshell")/python}
log_format=${GRACESHELL_LOG_FORMAT:-console}

# scene TITLE SECONDS_INTO_THE_FIRST_JOB GRACESHELL_OPTIONS... -- WORKER_OPTIONS...; sets $status to graceshell's.
scene() {
    local title=$1 wait=$2
    shift 2
    local options=()
    while [ "$1" != "--" ]; do options+=("$1"); shift; done
    shift
    echo "=== demo: $title ==="
    local ready
    ready=$(mktemp -u "${TMPDIR:-/tmp}/graceshell-demo.XXXXXX")
    "$graceshell" run --name worker --log-format "$log_format" "${options[@]}" \
        -- "$python" examples/demo_worker.py --ready-file "$ready" "$@" &
    local pid=$!
    # The stop comes $wait seconds into the first job, however long the start took.
    while [ ! -e "$ready" ] && kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    rm -f "$ready"
    sleep "$wait"
    echo "--- demo: SIGTERM to graceshell (pid $pid), as the platform would send it ---"
    kill -TERM "$pid"
    wait "$pid"
    status=$?
    echo "--- demo: graceshell exited with status $status; the graceshell.exit line above is the report ---"
}

scene "a clean stop (Heroku: SIGTERM, SIGKILL 30 s later)" 2 --platform heroku --
clean=$status
echo
scene "a job too long for the budget (docker stop -t 4: SIGTERM, SIGKILL 4 s later)" 1 \
    --platform docker --platform-timeout 4s -- --job-seconds 60
killed=$status
echo
echo "demo: the clean stop exited $clean (the worker's own 0); the long job's run exited $killed (128+9:" \
     "graceshell's KILL, before the platform's; its report's orphaned_jobs names the job)"
[ "$clean" = 0 ] && [ "$killed" = 137 ]
