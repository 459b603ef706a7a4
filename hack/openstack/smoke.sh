#!/usr/bin/env bash
# End-to-end check of the local OpenStack (run.py) with curl only, then a
# real `packer build` with Debian's Packer 1.6.6 and its `openstack` builder.
# Prints what each step returned; exits non-zero on the first failure.
#
#   hack/openstack/smoke.sh            (runs setup.sh first)
#   SMOKE_SKIP_PACKER=1 hack/openstack/smoke.sh
#   SMOKE_KEEP=1 hack/openstack/smoke.sh   (keeps the logs even on success)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/setup.sh" >/dev/null

work="$(mktemp -d /tmp/kiln-openstack-smoke.XXXXXX)"
stack_pid=""
cleanup() {
	local rc=$?
	if [ -n "$stack_pid" ] && kill -0 "$stack_pid" 2>/dev/null; then
		kill -TERM "$stack_pid"
		wait "$stack_pid" || true
	fi
	if [ "$rc" -ne 0 ]; then
		echo "smoke: FAILED (rc $rc); logs kept in $work/stack/logs" >&2
	elif [ -n "${SMOKE_KEEP:-}" ]; then
		echo "smoke: logs kept in $work"
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
# jq is not assumed: python3's json does the reading.
jget() { python3 -c 'import json,sys; d=json.load(sys.stdin)
for k in sys.argv[1].split("."):
    d = d[int(k)] if isinstance(d, list) else d[k]
print(d if isinstance(d, str) else json.dumps(d))' "$1"; }
# curl wrapper: prints "HTTP <code>" on stderr-free stdout line 1, body after.
call() { # METHOD URL [curl args...]
	local method=$1 url=$2
	shift 2
	curl -sS -o "$work/body" -D "$work/headers" -w '%{http_code}' -X "$method" "$url" "$@"
}
expect() { # CODE ACTUAL WHAT
	if [ "$1" != "$2" ]; then
		echo "unexpected HTTP $2 for $3 (wanted $1):" >&2
		cat "$work/body" >&2
		echo >&2
		exit 1
	fi
}
header() { tr -d '\r' <"$work/headers" | awk -v h="$(echo "$1" | tr 'A-Z' 'a-z')" 'tolower($1)==h":" {print $2}'; }

step "start run.py"
start=$(date +%s.%N)
python3 "$here/run.py" "$work/stack" >"$work/stack.json" 2>"$work/stack.err" &
stack_pid=$!
# Poll for the JSON line (run.py's own timeout is 120 s per phase).
while [ ! -s "$work/stack.json" ]; do
	if ! kill -0 "$stack_pid" 2>/dev/null; then
		cat "$work/stack.err" >&2
		exit 1
	fi
	sleep 0.2
done
ready=$(python3 -c "import sys; print(round($(date +%s.%N) - $start, 1))")
s() { jget "$1" <"$work/stack.json"; }
auth_url=$(s auth_url)
glance=$(s glance.RegionOne)
glance2=$(s glance.RegionTwo)
nova=$(s nova.RegionOne)
echo "ready after ${ready} s (run.py says $(s ready_seconds) s); pids $(s pids)"
echo "auth_url=$auth_url glance=$(s glance) nova=$(s nova)"

step "token by password (user kiln, project kiln)"
code=$(call POST "$auth_url/auth/tokens" -H 'Content-Type: application/json' -d "$(
	python3 -c 'import json,sys; print(json.dumps({"auth": {"identity": {"methods": ["password"],
 "password": {"user": {"name": sys.argv[1], "password": sys.argv[2], "domain": {"name": "Default"}}}},
 "scope": {"project": {"name": sys.argv[3], "domain": {"name": "Default"}}}}}))' \
		"$(s username)" "$(s password)" "$(s project)")")
expect 201 "$code" "password token"
token=$(header X-Subject-Token)
echo "HTTP $code token=${token:0:16}... expires=$(jget token.expires_at <"$work/body")" \
	"roles=$(python3 -c 'import json,sys; print([r["name"] for r in json.load(sys.stdin)["token"]["roles"]])' <"$work/body")"

step "token by application credential"
code=$(call POST "$auth_url/auth/tokens" -H 'Content-Type: application/json' -d "$(
	python3 -c 'import json,sys; print(json.dumps({"auth": {"identity": {"methods": ["application_credential"],
 "application_credential": {"id": sys.argv[1], "secret": sys.argv[2]}}}}))' \
		"$(s app_cred_id)" "$(s app_cred_secret)")")
expect 201 "$code" "application credential token"
app_token=$(header X-Subject-Token)
echo "HTTP $code token=${app_token:0:16}... project=$(jget token.project.name <"$work/body")" \
	"methods=$(jget token.methods <"$work/body") app_cred=$(jget token.application_credential.name <"$work/body")"

step "catalogue (GET /v3/auth/catalog with the application-credential token)"
code=$(call GET "$auth_url/auth/catalog" -H "X-Auth-Token: $app_token")
expect 200 "$code" "catalogue"
echo "HTTP $code"
python3 -c 'import json,sys
for svc in json.load(sys.stdin)["catalog"]:
    for ep in svc["endpoints"]:
        print("  %-9s %-8s %-9s %-8s %s" % (svc["type"], svc["name"], ep["region"], ep["interface"], ep["url"]))' <"$work/body"

step "Glance RegionOne: create two images, upload bytes, tag, set properties"
ids=()
for n in 1 2; do
	code=$(call POST "$glance/v2/images" -H "X-Auth-Token: $token" -H 'Content-Type: application/json' \
		-d "{\"name\": \"kiln-smoke-$n\", \"disk_format\": \"raw\", \"container_format\": \"bare\"}")
	expect 201 "$code" "create image"
	id=$(jget id <"$work/body")
	ids+=("$id")
	echo "create  HTTP $code id=$id status=$(jget status <"$work/body")"
	printf 'kiln smoke image %s\n' "$n" >"$work/data"
	code=$(call PUT "$glance/v2/images/$id/file" -H "X-Auth-Token: $token" \
		-H 'Content-Type: application/octet-stream' --data-binary @"$work/data")
	expect 204 "$code" "upload"
	echo "upload  HTTP $code ($(wc -c <"$work/data") bytes)"
	for tag in kiln-smoke "n$n"; do
		code=$(call PUT "$glance/v2/images/$id/tags/$tag" -H "X-Auth-Token: $token")
		expect 204 "$code" "tag $tag"
	done
	echo "tags    HTTP $code"
	code=$(call PATCH "$glance/v2/images/$id" -H "X-Auth-Token: $token" \
		-H 'Content-Type: application/openstack-images-v2.1-json-patch' \
		-d '[{"op": "replace", "path": "/os_hidden", "value": true},
		     {"op": "add", "path": "/kiln_namespace", "value": "demo"}]')
	expect 200 "$code" "patch"
	echo "patch   HTTP $code status=$(jget status <"$work/body") size=$(jget size <"$work/body")" \
		"checksum=$(jget checksum <"$work/body") os_hidden=$(jget os_hidden <"$work/body")" \
		"kiln_namespace=$(jget kiln_namespace <"$work/body") tags=$(jget tags <"$work/body")"
done

step "Glance: a member may not publish an image (default policy)"
code=$(call PATCH "$glance/v2/images/${ids[0]}" -H "X-Auth-Token: $token" \
	-H 'Content-Type: application/openstack-images-v2.1-json-patch' \
	-d '[{"op": "replace", "path": "/visibility", "value": "public"}]')
expect 403 "$code" "publish as member"
echo "visibility=public: HTTP $code $(tr -d '\n' <"$work/body" | sed 's/<[^>]*>/ /g; s/  */ /g')"

step "Glance: list by tag (hidden images need os_hidden=true), limit=1 + next"
code=$(call GET "$glance/v2/images?tag=kiln-smoke" -H "X-Auth-Token: $token")
expect 200 "$code" "list without os_hidden"
echo "without os_hidden: HTTP $code images=$(python3 -c 'import json,sys; print(len(json.load(sys.stdin)["images"]))' <"$work/body")"
url="$glance/v2/images?tag=kiln-smoke&os_hidden=true&kiln_namespace=demo&limit=1&sort=name:asc"
seen=()
while [ -n "$url" ]; do
	code=$(call GET "$url" -H "X-Auth-Token: $token")
	expect 200 "$code" "list page"
	page=$(python3 -c 'import json,sys; print(" ".join(i["name"] for i in json.load(sys.stdin)["images"]))' <"$work/body")
	next=$(python3 -c 'import json,sys; print(json.load(sys.stdin).get("next", ""))' <"$work/body")
	echo "page: HTTP $code images=[$page] next=${next:-<none>}"
	[ -n "$page" ] && seen+=("$page")
	url=""
	[ -z "$next" ] || url="$glance$next"
done
[ "${#seen[@]}" -eq 2 ] || {
	echo "wanted 2 pages of one image, got ${#seen[@]}" >&2
	exit 1
}

step "Glance: delete the images"
for id in "${ids[@]}"; do
	code=$(call DELETE "$glance/v2/images/$id" -H "X-Auth-Token: $token")
	expect 204 "$code" "delete"
	code2=$(call GET "$glance/v2/images/$id" -H "X-Auth-Token: $token")
	expect 404 "$code2" "get after delete"
	echo "delete $id: HTTP $code, then GET: HTTP $code2"
done

step "Nova stand-in: version document and flavors"
code=$(call GET "${nova%/v2.1}/")
expect 200 "$code" "versions"
echo "GET / HTTP $code $(cat "$work/body")"
code=$(call GET "$nova/flavors/detail" -H "X-Auth-Token: $token")
expect 200 "$code" "flavors"
echo "GET /flavors/detail HTTP $code $(python3 -c 'import json,sys; print([(f["id"], f["name"], f["ram"], f["disk"]) for f in json.load(sys.stdin)["flavors"]])' <"$work/body")"
code=$(call GET "$nova/flavors" -H "X-Auth-Token: bogus")
expect 401 "$code" "flavors with a bad token"
echo "GET /flavors with a bad token: HTTP $code"

if [ -n "${SMOKE_SKIP_PACKER:-}" ]; then
	echo "smoke: OK (packer skipped)"
	exit 0
fi
if ! command -v packer >/dev/null; then
	step "apt-get install packer"
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo="sudo"
	$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq packer >/dev/null
fi
step "packer $(packer version | head -1): source image"
code=$(call POST "$glance/v2/images" -H "X-Auth-Token: $token" -H 'Content-Type: application/json' \
	-d '{"name": "kiln-smoke-base", "disk_format": "raw", "container_format": "bare", "os_distro": "debian"}')
expect 201 "$code" "create source image"
source_id=$(jget id <"$work/body")
head -c 1048576 /dev/urandom >"$work/base.img"
code=$(call PUT "$glance/v2/images/$source_id/file" -H "X-Auth-Token: $token" \
	-H 'Content-Type: application/octet-stream' --data-binary @"$work/base.img")
expect 204 "$code" "upload source image"
echo "source image $source_id: 1 MiB uploaded, HTTP $code"

image_name="kiln-smoke-packer-$(date +%s)"
python3 - "$work/template.json" <<EOF
import json, sys
stack = json.load(open("$work/stack.json"))
json.dump({"builders": [{
    "type": "openstack",
    "identity_endpoint": stack["auth_url"],
    "region": "RegionOne",
    "application_credential_id": stack["app_cred_id"],
    "application_credential_secret": stack["app_cred_secret"],
    "source_image": "$source_id",
    "flavor": "m1.tiny",
    "image_name": "$image_name",
    "metadata": {"kiln_namespace": "demo"},
    "image_tags": ["kiln-smoke"],
    "communicator": "none",
}]}, open(sys.argv[1], "w"), indent=2)
EOF
step "packer build (application credential, RegionOne, communicator none)"
# CHECKPOINT_DISABLE: Packer must not call home (no internet here).
(cd "$work" && CHECKPOINT_DISABLE=1 PACKER_LOG=1 PACKER_LOG_PATH="$work/packer.log" \
	timeout 600 packer build -color=false -machine-readable template.json >"$work/packer.out") || {
	cat "$work/packer.out" >&2
	tail -40 "$work/packer.log" >&2
	exit 1
}
grep -E ',ui,(say|message),' "$work/packer.out" | cut -d, -f5- | sed 's/%!(PACKER_COMMA)/,/g; s/\\n//g'
artifact=$(awk -F, '$3=="artifact" && $5=="id" {print $6}' "$work/packer.out")
echo "artifact id: $artifact"

step "check the Packer image in Glance"
code=$(call GET "$glance/v2/images/$artifact" -H "X-Auth-Token: $token")
expect 200 "$code" "get packer image"
python3 -c 'import json,sys
i = json.load(sys.stdin)
print("HTTP 200 name=%s status=%s size=%s tags=%s kiln_namespace=%s image_type=%s base_image_ref=%s os_distro=%s" % (
    i["name"], i["status"], i["size"], i["tags"], i.get("kiln_namespace"), i.get("image_type"),
    i.get("base_image_ref"), i.get("os_distro")))
assert i["name"] == sys.argv[1] and i["status"] == "active" and i["size"] == 1048576, i
assert i.get("kiln_namespace") == "demo" and "kiln-smoke" in i["tags"], i' "$image_name" <"$work/body"
code=$(call GET "$glance2/v2/images/$artifact" -H "X-Auth-Token: $token")
expect 404 "$code" "packer image in RegionTwo"
echo "RegionTwo's Glance: HTTP $code (regions have separate Glances)"
code=$(call GET "$nova/servers" -H "X-Auth-Token: $token")
expect 200 "$code" "servers"
echo "Nova servers left: $(jget servers <"$work/body")"
code=$(call GET "$nova/os-keypairs" -H "X-Auth-Token: $token")
echo "Nova keypairs left: $(jget keypairs <"$work/body")"
echo
echo "smoke: OK"
