#!/usr/bin/env bash
# Runs the demo worker under graceshell, then stops it the way Heroku does:
# a SIGTERM, with 30 s before the platform's SIGKILL (graceshell's budget: 25 s).
set -u
cd "$(dirname "$0")/.."
graceshell=${GRACESHELL:-.venv/bin/graceshell}
python=${PYTHON:-$(dirname "$graceshell")/python}

"$graceshell" run --platform heroku --name worker --log-format "${GRACESHELL_LOG_FORMAT:-console}" \
    -- "$python" examples/demo_worker.py &
pid=$!
sleep 4
echo "--- demo: SIGTERM to graceshell (pid $pid), as the platform would send it ---"
kill -TERM "$pid"
wait "$pid"
status=$?
echo "--- demo: graceshell exited with status $status; the graceshell.exit line above is the report ---"
exit "$status"
