#!/usr/bin/env bash
# The image build and the compose stack, exercised end to end where a Docker
# engine (with the compose plugin) is available; the test suite validates the
# files everywhere, this runs them. From anywhere:
#
#   bash deploy/smoke.sh            # ~15 min the first time (the release build)
#
# It builds the CPU image, checks its labels and user, makes an API key with
# the image, brings deploy/compose.yaml up under a project of its own (three
# replicas, Redis, nginx, Prometheus, Grafana), waits for every replica to be
# healthy and /ready through the proxy, makes one chat completion through the
# proxy, checks that the proxy's forwarding headers keep the admin API closed
# while a replica answers it on loopback, that Prometheus scrapes three kiln
# targets and that Grafana has the dashboard, then tears everything down
# (volumes included). Exit 0: all passed; 2: no Docker engine here.
# KILN_SMOKE_CUDA=1 also builds the CUDA image (not run: that needs a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! docker info >/dev/null 2>&1; then
  echo "smoke: skipped: no Docker engine answers (docker info failed)" >&2
  exit 2
fi
if ! docker compose version >/dev/null 2>&1; then
  echo "smoke: skipped: the docker compose plugin is not installed" >&2
  exit 2
fi

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
image="kiln:$version"
project="kiln-smoke-$$"
http_port=${KILN_HTTP_PORT:-18080}
prometheus_port=${KILN_PROMETHEUS_PORT:-19090}
grafana_port=${KILN_GRAFANA_PORT:-13000}
export KILN_VERSION="$version" KILN_HTTP_PORT="$http_port"
export KILN_PROMETHEUS_PORT="$prometheus_port" KILN_GRAFANA_PORT="$grafana_port"
work=$(mktemp -d)
compose=(docker compose -p "$project" -f deploy/compose.yaml)

step() { echo "== smoke: $*" >&2; }
fail() {
  echo "smoke: FAILED: $*" >&2
  "${compose[@]}" ps -a >&2 || true
  "${compose[@]}" logs --no-color --tail 50 >&2 || true
  exit 1
}
cleanup() {
  "${compose[@]}" down --volumes --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# Polls `$@` every 5 s until it succeeds or `$1` seconds have passed.
wait_for() {
  local limit=$1 started=$SECONDS
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS - started < limit)) || return 1
    sleep 5
  done
}

step "image $image"
docker build -f deploy/Dockerfile --build-arg "KILN_VERSION=$version" -t "$image" .
label=$(docker image inspect -f '{{ index .Config.Labels "org.opencontainers.image.version" }}' "$image")
[ "$label" = "$version" ] || fail "the image's version label is '$label', not $version"
user=$(docker image inspect -f '{{ .Config.User }}' "$image")
[ "$user" = "10001:10001" ] || fail "the image runs as '$user', not 10001:10001"
docker run --rm "$image" --version | grep -q "$version" || fail "kiln --version does not say $version"
if [ "${KILN_SMOKE_CUDA:-0}" = 1 ]; then
  step "CUDA image $image-cuda"
  docker build -f deploy/Dockerfile --target cuda --build-arg "KILN_VERSION=$version" -t "$image-cuda" .
fi

step "an admin key, made by the image"
docker run --rm "$image" keys create --name smoke --scope admin >"$work/key" 2>"$work/entry"
key=$(tr -d '\n' <"$work/key")
sed -n '/^\[\[keys\]\]/,$p' "$work/entry" >"$work/keys.toml"
grep -q '^sha256 = ' "$work/keys.toml" || fail "no [[keys]] entry in: $(cat "$work/entry")"
chmod 0755 "$work"
chmod 0644 "$work/keys.toml"
export KILN_KEYS_FILE="$work/keys.toml"

step "compose stack $project (three replicas)"
"${compose[@]}" config --quiet
"${compose[@]}" up -d
replicas_healthy() {
  [ "$("${compose[@]}" ps --status running --format '{{.Service}} {{.Health}}' | grep -c '^kiln healthy$')" = 3 ]
}
wait_for 900 replicas_healthy || fail "three healthy kiln replicas did not come up in 15 minutes"
wait_for 120 curl -fsS "http://127.0.0.1:$http_port/ready" || fail "/ready through the proxy did not answer 200"

step "a chat completion through the proxy"
body='{"model":"SmolLM2-135M-Instruct.Q4_1","messages":[{"role":"user","content":"What is 2+2?"}],"max_tokens":16,"temperature":0}'
answer=$(curl -fsS -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -d "$body" "http://127.0.0.1:$http_port/v1/chat/completions") || fail "the completion request failed"
grep -q '"object":"chat.completion"' <<<"$answer" || fail "not a chat completion: $answer"
grep -q '"system_fingerprint":"fp_' <<<"$answer" || fail "no system_fingerprint: $answer"
status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http_port/v1/chat/completions" \
  -H 'Content-Type: application/json' -d "$body")
[ "$status" = 401 ] || fail "a request without a key got $status, not 401"

step "the admin API: refused through the proxy, answered on a replica's loopback"
status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $key" \
  "http://127.0.0.1:$http_port/v1/plugins")
[ "$status" = 403 ] || fail "GET /v1/plugins through the proxy got $status, not 403"
"${compose[@]}" exec -T --index 1 kiln curl -fsS -o /dev/null -H "Authorization: Bearer $key" \
  http://127.0.0.1:8000/v1/plugins || fail "GET /v1/plugins on a replica's loopback failed"

step "Prometheus scrapes three kiln targets"
kiln_targets_up() {
  curl -fsS "http://127.0.0.1:$prometheus_port/api/v1/query" --data-urlencode 'query=count(up{job="kiln"} == 1)' |
    grep -q '"value":\[[0-9.]*,"3"\]'
}
wait_for 120 kiln_targets_up || fail "Prometheus does not have three kiln targets up"

step "Grafana has the dashboard"
wait_for 120 curl -fsS "http://127.0.0.1:$grafana_port/api/dashboards/uid/kiln" ||
  fail "Grafana does not serve the kiln dashboard"

step "passed"
