#!/usr/bin/env bash
# `make ui`: the local Prefect server (SQLite under flows.prefect_home), the MLflow UI (`make mlflow`)
# and one process serving every deployment (python -m flows.serve_all), all on 127.0.0.1.
# Each runs in its own session (setsid), so Ctrl-C reaches only this script, which stops them in order: the serve process first (or the server waits on it), then the UIs.
set -euo pipefail
# params values reach `eval` shell-quoted: a prefect_home with spaces or `;` is one word and runs nothing
eval "$(python -c 'import shlex; from pipelines.config import load_params; f = load_params().flows; print("home=" + shlex.quote(f.prefect_home), f"port={f.prefect_port}")')"
export PREFECT_HOME="$(cd "$(dirname "$home")" && pwd)/$(basename "$home")"
export PREFECT_API_URL="http://127.0.0.1:${port}/api" PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
mkdir -p "$PREFECT_HOME"
server= mlflow_pid= serve_pid=
stop() {
  trap - INT TERM EXIT
  echo; echo "stopping: serve process, then MLflow and the Prefect server ..."
  for pid in $serve_pid $mlflow_pid $server; do
    kill -INT -- "-$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT
setsid prefect server start --host 127.0.0.1 --port "$port" >"$PREFECT_HOME/server.log" 2>&1 & server=$!
setsid make --no-print-directory mlflow >"$PREFECT_HOME/mlflow.log" 2>&1 & mlflow_pid=$!
printf 'waiting for the Prefect server'
for _ in $(seq 120); do
  curl -sf "$PREFECT_API_URL/health" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { echo; echo "the Prefect server exited:"; tail -20 "$PREFECT_HOME/server.log"; exit 1; }
  printf '.'; sleep 1
done
echo
setsid python -m flows.serve_all >"$PREFECT_HOME/serve_all.log" 2>&1 & serve_pid=$!
list_deployments() {  # names only (`prefect deployment ls` prints a wide table)
  curl -sf -X POST "$PREFECT_API_URL/deployments/filter" -H 'content-type: application/json' -d '{"limit": 100}' \
    | python -c 'import json, sys; print("\n".join(sorted(d["name"] for d in json.load(sys.stdin))))'
}
for _ in $(seq 120); do [[ "$(list_deployments 2>/dev/null)" == *retrain* ]] && break; sleep 1; done
echo "deployments:"; list_deployments | sed 's/^/  /'
cat <<MSG

Prefect UI:  http://127.0.0.1:${port}   (Deployments -> a flow -> Run -> Custom run: the parameter form)
MLflow UI:   http://127.0.0.1:5000
Logs:        $PREFECT_HOME/{server,mlflow,serve_all}.log
In another shell: export PREFECT_API_URL=$PREFECT_API_URL   (then prefect deployment run training/training)
Ctrl-C stops everything.
MSG
wait "$serve_pid"
