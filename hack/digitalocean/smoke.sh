#!/usr/bin/env bash
# Smoke test of the DigitalOcean stand-in (README.md beside this file): starts
# it behind Prism, calls every implemented endpoint with curl, shows that
# Prism rejects a request and a response that break the spec, then builds a
# snapshot with Debian's Packer 1.6.6 (`digitalocean` builder, api_url) and
# checks through the API that it exists in both snapshot_regions.
# Prints what each step sent and got back, and "N passed, N failed" last.
# SKIP_PACKER=1 leaves the Packer build out; KEEP_WORK=1 keeps its temporary
# directory (logs, template), which is otherwise removed after a clean run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/setup.sh"

work="$(mktemp -d -t kiln-do-smoke-XXXXXX)"
passed=0
failed=0
run_pid=""
cleanup() {
	if [ -n "$run_pid" ] && kill -0 "$run_pid" 2>/dev/null; then
		kill -TERM "$run_pid"
		wait "$run_pid" 2>/dev/null || true
	fi
	if [ "$failed" = 0 ] && [ -z "${KEEP_WORK:-}" ] && [ -n "${smoke_done:-}" ]; then
		rm -rf "$work"
	else
		echo "logs and files kept in $work"
	fi
}
trap cleanup EXIT

ok() { passed=$((passed + 1)); echo "   ok: $*"; }
bad() { failed=$((failed + 1)); echo "   FAILED: $*"; }
step() { echo; echo "### $*"; }
# j EXPR: evaluate a Python expression on the last response body, as `d`.
j() {
	python3 -c '
import json, sys
try:
    d = json.load(open(sys.argv[1]))
    print(eval(sys.argv[2]))
except Exception as e:
    print(f"({type(e).__name__}: {e})")' "$work/body" "$1"
}

# api METHOD PATH [JSON] [TOKEN|-]: one call through the validating proxy.
# Sets $code; the body is in $work/body, the headers in $work/headers.
api() {
	local method=$1 path=$2 data=${3:-} tok=${4:-$TOKEN} args=()
	[ "$tok" = "-" ] || args+=(-H "Authorization: Bearer $tok")
	[ -z "$data" ] || args+=(-H "Content-Type: application/json" --data "$data")
	code=$(curl -sS -o "$work/body" -D "$work/headers" -w '%{http_code}' -X "$method" "${args[@]}" "$API$path")
	echo "-> $method $path${data:+ $data}"
	echo "<- $code $(head -c 400 "$work/body")$([ "$(wc -c <"$work/body")" -gt 400 ] && echo ' ...')"
}
expect() { if [ "$code" = "$1" ]; then ok "HTTP $code${2:+: $2}"; else bad "wanted HTTP $1, got $code${2:+: $2}"; fi; }
check() { if [ "$(j "$1")" = "True" ]; then ok "$1"; else bad "$1"; fi; }
# poll PATH EXPR [SECONDS]: GET until EXPR holds on the body (quietly), then show it.
poll() {
	local path=$1 expr=$2 deadline=$(($(date +%s) + ${3:-30}))
	while :; do
		code=$(curl -sS -o "$work/body" -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$API$path")
		if [ "$code" = 200 ] && [ "$(j "$expr")" = "True" ]; then break; fi
		[ "$(date +%s)" -lt "$deadline" ] || break
		sleep 0.2 # poll interval
	done
	echo "-> GET $path (polled until $expr)"
	echo "<- $code $(head -c 400 "$work/body")"
	check "$expr"
}
control() {
	echo "-> control POST /_standin/$1 $2"
	echo "<- $(curl -sS -X POST -H 'Content-Type: application/json' --data "$2" "$CONTROL/$1")"
}

step "start: run.py (front -> Prism proxy --errors -> standin.py)"
mkfifo "$work/ready"
t0=$(date +%s.%N)
STANDIN_ACTION_SECONDS="${STANDIN_ACTION_SECONDS:-0.5}" python3 "$here/run.py" --log-dir "$work/logs" \
	>"$work/ready" 2>"$work/run.err" &
run_pid=$!
exec 3<"$work/ready"
if ! read -r ready <&3; then
	cat "$work/run.err"
	echo "run.py did not start"
	exit 1
fi
t1=$(date +%s.%N)
echo "$ready"
echo "start-to-ready: $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')s"
eval "$(python3 -c 'import json,sys,shlex; d=json.loads(sys.argv[1]); print(" ".join(f"{k}={shlex.quote(str(v))}" for k,v in (("API",d["api_url"]),("TOKEN",d["token"]),("RO_TOKEN",d["readonly_token"]),("CONTROL",d["control_url"]),("LOGS",d["logs"]["front"]))))' "$ready")"

step "auth: no token (Prism), unknown token (stand-in), read-only token on a write"
api GET /v2/regions "" -
expect 401 "no Authorization header"
api GET /v2/regions "" dop_v1_not-a-token
expect 401 "unknown token"
api POST /v2/tags '{"name":"readonly-test"}' "$RO_TOKEN"
expect 403 "read-only token"
api GET "/v2/sizes?per_page=1" "" "$RO_TOKEN"
expect 200 "read-only token may read"

step "account; an endpoint in the spec that the stand-in lacks fails loudly"
api GET /v2/account
expect 200
api GET /v2/volumes
expect 400 "not implemented (never 501: Prism would answer a 501 with a mock)"

step "regions and sizes, with rate-limit headers"
api GET "/v2/regions?page=1&per_page=200"
expect 200
check "len(d['regions']) >= 2 and d['meta']['total'] == len(d['regions'])"
grep -i '^ratelimit-' "$work/headers"
grep -qi '^ratelimit-remaining: [0-9]' "$work/headers" && ok "ratelimit headers" || bad "ratelimit headers"
api GET /v2/sizes
expect 200
check "'s-1vcpu-1gb' in [s['slug'] for s in d['sizes']]"

step "images: by slug, by id, distribution list with pagination"
api GET /v2/images/ubuntu-22-04-x64
expect 200
base_id=$(j "d['image']['id']")
api GET "/v2/images/$base_id"
expect 200
api GET "/v2/images?type=distribution&per_page=2"
expect 200
total=$(j "d['meta']['total']")
seen=$(j "len(d['images'])")
next=$(j "d['links']['pages'].get('next', '')")
while [ -n "$next" ]; do
	api GET "${next#"$API"}"
	seen=$((seen + $(j "len(d['images'])")))
	next=$(j "d['links']['pages'].get('next', '')")
done
[ "$seen" = "$total" ] && ok "followed links.pages.next: $seen of $total images" || bad "pages gave $seen of $total"

step "ssh keys: create, get by fingerprint, delete"
pub="ssh-ed25519 $(head -c 51 /dev/urandom | base64 -w0) smoke@kiln"
api POST /v2/account/keys "{\"name\":\"smoke-key\",\"public_key\":\"$pub\"}"
expect 201
key_id=$(j "d['ssh_key']['id']")
fp=$(j "d['ssh_key']['fingerprint']")
api GET "/v2/account/keys/$fp"
expect 200

step "droplet: create, wait for active, shutdown, power_off is refused when off, snapshot"
api POST /v2/droplets "{\"name\":\"smoke-1\",\"region\":\"nyc3\",\"size\":\"s-1vcpu-1gb\",\"image\":\"ubuntu-22-04-x64\",\"ssh_keys\":[$key_id],\"tags\":null}"
expect 202
droplet=$(j "d['droplet']['id']")
create_action=$(j "d['links']['actions'][0]['id']")
poll "/v2/droplets/$droplet" "d['droplet']['status'] == 'active' and not d['droplet']['locked']"
api GET "/v2/actions/$create_action"
expect 200
api POST "/v2/droplets/$droplet/actions" '{"type":"shutdown"}'
expect 201
action=$(j "d['action']['id']")
api POST "/v2/droplets/$droplet/actions" '{"type":"power_off"}'
expect 422 "a second action while one is pending"
poll "/v2/droplets/$droplet/actions/$action" "d['action']['status'] == 'completed'"
poll "/v2/droplets/$droplet" "d['droplet']['status'] == 'off'"
api POST "/v2/droplets/$droplet/actions" '{"type":"power_off"}'
expect 422 "power_off when already off"
api POST "/v2/droplets/$droplet/actions" '{"type":"snapshot","name":"smoke-snapshot"}'
expect 201
action=$(j "d['action']['id']")
poll "/v2/actions/$action" "d['action']['status'] == 'completed'"
api GET "/v2/droplets/$droplet/snapshots"
expect 200
snap=$(j "d['snapshots'][0]['id']")
api GET "/v2/images?private=true"
expect 200
check "[i['name'] for i in d['images']] == ['smoke-snapshot']"

step "image action: transfer the snapshot to sfo3 (its regions grow)"
api POST "/v2/images/$snap/actions" '{"type":"transfer","region":"sfo3"}'
expect 201
action=$(j "d['action']['id']")
poll "/v2/images/$snap/actions/$action" "d['action']['status'] == 'completed'"
api GET "/v2/images/$snap"
check "d['image']['regions'] == ['nyc3', 'sfo3']"

step "tags: create, get, tag the snapshot, list images by tag_name"
api POST /v2/tags '{"name":"kiln-managed"}'
expect 201
api POST /v2/tags/kiln-managed/resources "{\"resources\":[{\"resource_id\":\"$snap\",\"resource_type\":\"image\"}]}"
expect 204
api GET /v2/tags/kiln-managed
expect 200
check "d['tag']['resources']['images']['count'] == 1"
control images '{"name":"old-snapshot","regions":["nyc3","ams3"],"created_at":"2020-01-02T03:04:05Z","tags":["kiln-managed"]}'
api GET "/v2/images?tag_name=kiln-managed&per_page=1"
expect 200
check "d['meta']['total'] == 2 and 'next' in d['links']['pages']"
api GET "/v2/images?tag_name=kiln-managed"
check "sorted(i['created_at'] for i in d['images'])[0] == '2020-01-02T03:04:05Z'"

step "cleanup calls: delete droplet, key, image"
api DELETE "/v2/droplets/$droplet"
expect 204
api DELETE "/v2/account/keys/$key_id"
expect 204
api DELETE "/v2/images/$snap"
expect 204
api GET "/v2/images/$snap"
expect 404

step "rate limit: the next 2 requests answer 429 with Retry-After"
control ratelimit '{"count":2,"retry_after":7}'
api GET /v2/regions
expect 429
grep -i '^retry-after' "$work/headers"
grep -qi '^retry-after: 7' "$work/headers" && ok "Retry-After: 7" || bad "no Retry-After"
api GET /v2/regions
expect 429
api GET /v2/regions
expect 200 "budget back"

step "request validation (Prism): wrong path, bad enum, missing field, bad field type, pattern"
api GET /v2/imagez
expect 404 "path not in the spec"
api GET "/v2/images?type=snapshot"
expect 422 "type=snapshot is not in the spec's enum (application, distribution)"
api POST /v2/droplets '{"name":"x","region":"nyc3","image":"ubuntu-22-04-x64"}'
expect 422 "droplet without size"
api POST /v2/tags/kiln-managed/resources '{"resources":[{"resource_id":123,"resource_type":"image"}]}'
expect 422 "resource_id must be a string"
api POST "/v2/droplets/$base_id/actions" '{"type":"explode"}'
expect 422 "action type not in the enum"
api POST /v2/droplets '{"name":"not a valid name!","region":"nyc3","size":"s-1vcpu-1gb","image":"ubuntu-22-04-x64"}'
expect 422 "droplet name against the spec's pattern"
api GET "/v2/regions?per_page=500"
expect 422 "per_page above the spec's maximum (200)"
step "request checks the spec cannot express (stand-in): undeclared field; image action region"
api POST /v2/tags '{"name":"x","colour":"red"}'
expect 422 "undeclared property"
# The body schema is anyOf [image_action_base, image_action_transfer]; Prism
# ignores the discriminator, and image_action_base alone accepts any region.
api POST "/v2/images/$base_id/actions" '{"type":"transfer","region":"mars1"}'
expect 422 "region not in the spec's enum: passes Prism, the stand-in refuses it"
api POST "/v2/images/$base_id/actions" '{"type":"transfer"}'
expect 422 "transfer without region: passes Prism, the stand-in refuses it"
# Prism does not apply the tag-name pattern ^[a-zA-Z0-9_\-\:]+$ (not in the body, not in the path).
api POST /v2/tags '{"name":"not a valid tag!"}'
expect 422 "tag name against the spec's pattern: passes Prism, the stand-in refuses it"

step "response validation (Prism): the stand-in breaks its next response on purpose"
control malform '{"count":1}'
api GET "/v2/images/$base_id"
expect 500 "Prism caught a response that breaks the spec"
grep -i '^sl-violations' "$work/headers" || true
echo "front log:"
grep REJECTED "$LOGS" | tail -n 3 | cut -c1-300

if [ "${SKIP_PACKER:-0}" != 1 ]; then
	step "Packer 1.6.6: a real digitalocean build against the stand-in"
	if ! [ -x /usr/bin/packer ]; then
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq packer >/dev/null
	fi
	/usr/bin/packer version
	name="kiln-smoke-$(date +%s)"
	cat >"$work/do.json" <<-EOF
		{
		  "builders": [{
		    "type": "digitalocean",
		    "api_url": "$API",
		    "api_token": "$TOKEN",
		    "image": "ubuntu-22-04-x64",
		    "region": "nyc3",
		    "size": "s-1vcpu-1gb",
		    "snapshot_name": "$name",
		    "snapshot_regions": ["sfo3", "ams3"],
		    "communicator": "none"
		  }]
		}
	EOF
	cat "$work/do.json" | sed "s/$TOKEN/<token>/"
	p0=$(date +%s.%N)
	if (cd "$work" && timeout --signal=INT 600 /usr/bin/packer build -color=false do.json >"$work/packer.out" 2>&1); then
		ok "packer build exited 0"
	else
		bad "packer build failed"
	fi
	p1=$(date +%s.%N)
	grep -E '^(==>|-->|Build)' "$work/packer.out" || cat "$work/packer.out"
	echo "packer build took $(awk -v a="$p0" -v b="$p1" 'BEGIN{printf "%.1f", b-a}')s"
	api GET "/v2/images?private=true&per_page=200"
	snap=$(j "[i['id'] for i in d['images'] if i['name'] == '$name'][0]")
	# Packer 1.6.6 does not wait for its transfers (it polls the wrong action),
	# so the regions may still be growing here.
	poll "/v2/images/$snap" "{'sfo3', 'ams3'} <= set(d['image']['regions'])"
	echo "snapshot $name ($snap) regions: $(j "d['image']['regions']")"
	api GET /v2/droplets
	check "d['meta']['total'] == 0"
	api GET /v2/account/keys
	check "d['meta']['total'] == 0"
fi

step "logs"
echo "stand-in log (last 8 lines):"
tail -n 8 "$(dirname "$LOGS")/standin.log" | cut -c1-250
echo "front log: $(grep -c REJECTED "$LOGS") rejections logged"

step "stop: SIGTERM to run.py stops Prism and the stand-in"
pids=$(python3 -c 'import json,sys; print(" ".join(map(str, json.loads(sys.argv[1])["pids"])))' "$ready")
kill -TERM "$run_pid"
wait "$run_pid" || true
run_pid=""
alive=""
for p in $pids; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
[ -z "$alive" ] && ok "children $pids gone" || bad "still running:$alive"

smoke_done=1
echo
echo "smoke: $passed passed, $failed failed"
[ "$failed" = 0 ]
