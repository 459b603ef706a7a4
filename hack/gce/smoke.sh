#!/usr/bin/env bash
# Smoke test of the Compute Engine stand-in (README.md beside this file):
# starts it with run.py, goes through every implemented endpoint with curl
# (auth and the OAuth2 token endpoint, the catalogue, a Packer-like build:
# instance -> disk -> image, then kiln's image calls: list with filter and
# pages, setLabels, deprecate, getFromFamily, patch, delete; the metadata
# server's token endpoint), shows the rejections
# the Discovery-driven validator makes, then stops it.
# Prints what each step sent and got back, and "smoke: N passed, N failed" last.
# KEEP_WORK=1 keeps its temporary directory (logs), otherwise removed after a
# clean run. GO_CLIENT=1 also builds hack/gce/goclient (Google's Go client,
# about a minute of CPU the first time) and runs it against the stand-in.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/setup.sh"

work="$(mktemp -d -t kiln-gce-smoke-XXXXXX)"
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

# api METHOD PATH [JSON] [TOKEN|-] [CURL ARGS...]: one call to the API, PATH
# relative to api_url. Sets $code; the body is in $work/body, headers in $work/headers.
api() {
	local method=$1 path=$2 data=${3:-} tok=${4:-$TOKEN} args=()
	shift 4 2>/dev/null || shift $#
	[ "$tok" = "-" ] || args+=(-H "Authorization: Bearer $tok")
	[ -z "$data" ] || args+=(--data "$data")
	[ -z "$data" ] || [ $# -gt 0 ] || args+=(-H "Content-Type: application/json")
	code=$(curl -sS -o "$work/body" -D "$work/headers" -w '%{http_code}' -X "$method" "${args[@]}" "$@" "$API$path")
	echo "-> $method $path${data:+ $data}"
	echo "<- $code $(tr -d '\n' <"$work/body" | tr -s ' ' | head -c 400)$([ "$(wc -c <"$work/body")" -gt 400 ] && echo ' ...')"
}
expect() { if [ "$code" = "$1" ]; then ok "HTTP $code${2:+: $2}"; else bad "wanted HTTP $1, got $code${2:+: $2}"; fi; }
check() { if [ "$(j "$1")" = "True" ]; then ok "$1"; else bad "$1"; fi; }
# reason R: the Google error reason of the last body.
reason() { check "d['error']['errors'][0]['reason'] == '$1'"; }
control() {
	echo "-> control ${3:-POST} /_standin/$1 $2"
	curl -sS -X "${3:-POST}" -H 'Content-Type: application/json' ${2:+--data "$2"} "$CONTROL/$1" >"$work/body"
	echo "<- $(head -c 300 "$work/body")"
}
# wait_op OPERATION_SELFLINK: the API's own `wait` until DONE (it may return early).
wait_op() {
	local rel=${1#"$API"} i
	for i in 1 2 3 4 5; do
		api POST "$rel/wait" "" >/dev/null
		[ "$(j "d.get('status')")" = DONE ] && break
	done
	echo "-> POST $rel/wait"
	echo "<- $code status=$(j "d.get('status')") error=$(j "d.get('error')")"
	check "d['status'] == 'DONE' and 'error' not in d"
}
# jwt CLAIMS_JSON [KEYFILE]: a JWT signed (RS256, openssl) with the service-account key.
# iat and exp default to now and now + 3600.
jwt() {
	python3 - "$CREDS" "$1" <<-'EOF'
		import base64, json, os, subprocess, sys, tempfile, time
		info = json.load(open(sys.argv[1]))
		claims = json.loads(sys.argv[2])
		now = int(time.time())
		claims.setdefault("iat", now)
		claims.setdefault("exp", now + 3600)
		b = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=").decode()
		head = b(json.dumps({"alg": "RS256", "typ": "JWT", "kid": info["private_key_id"]}).encode())
		body = b(json.dumps(claims).encode())
		with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as f:
		    f.write(info["private_key"])
		try:
		    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", f.name], input=f"{head}.{body}".encode(),
		                         capture_output=True, check=True).stdout
		finally:
		    os.unlink(f.name)
		print(f"{head}.{body}.{b(sig)}")
	EOF
}

step "start: run.py"
mkfifo "$work/ready"
t0=$(date +%s.%N)
ops="${STANDIN_OPERATION_SECONDS:-0.5}"
STANDIN_OPERATION_SECONDS="$ops" python3 "$here/run.py" --log-dir "$work/logs" \
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
eval "$(python3 -c 'import json,sys,shlex; d=json.loads(sys.argv[1]); print(" ".join(f"{k}={shlex.quote(str(v))}" for k,v in (("API",d["api_url"]),("TOKEN",d["token"]),("RO_TOKEN",d["readonly_token"]),("CONTROL",d["control_url"]),("CREDS",d["credentials_file"]),("TOKEN_URL",d["token_url"]),("SA",d["service_account"]),("P",d["project"]),("LOG",d["logs"]["standin"]),("MDHOST",d["metadata_host"]))))' "$ready")"
Z=us-central1-a
[ -s "$CREDS" ] && ok "credentials_file exists: $CREDS" || bad "no credentials_file"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["type"]=="service_account" and d["token_uri"]==sys.argv[2] and "BEGIN PRIVATE KEY" in d["private_key"]' "$CREDS" "$TOKEN_URL" &&
	ok "key file: type service_account, token_uri $TOKEN_URL, PKCS#8 private key" || bad "key file fields"

step "auth: missing, unknown, API key only, read-only scope on a write, access_token in the query"
api GET "projects/$P/zones" "" -
expect 401 "no Authorization header"
reason required
api GET "projects/$P/zones" "" ya29.not-a-token
expect 401 "unknown token"
reason authError
api GET "projects/$P/zones?key=AIzaFake" "" -
expect 401 "API key alone"
api POST "projects/$P/global/images" '{"name":"ro-test","sourceImage":"projects/debian-cloud/global/images/family/debian-12"}' "$RO_TOKEN"
expect 403 "compute.readonly token on images.insert"
reason insufficientPermissions
api GET "projects/$P/zones?maxResults=1" "" "$RO_TOKEN"
expect 200 "compute.readonly token may read"
api GET "projects/$P/zones?maxResults=1&access_token=$TOKEN" "" -
expect 200 "access_token query parameter"

step "OAuth2: JWT-bearer grant at token_uri with the generated key (what Google's auth libraries do)"
scope="https://www.googleapis.com/auth/compute https://www.googleapis.com/auth/devstorage.full_control"
grant() {
	code=$(curl -sS -o "$work/body" -w '%{http_code}' -X POST --data-urlencode "grant_type=${2:-urn:ietf:params:oauth:grant-type:jwt-bearer}" \
		--data-urlencode "assertion=$1" "$TOKEN_URL")
	echo "-> POST /token (grant_type=${2:-jwt-bearer})"
	echo "<- $code $(head -c 200 "$work/body")"
}
grant "$(jwt "{\"iss\":\"$SA\",\"aud\":\"$TOKEN_URL\",\"scope\":\"$scope\"}")"
expect 200 "token issued"
check "d['token_type'] == 'Bearer' and d['expires_in'] > 3000"
exchanged=$(j "d['access_token']")
api GET "projects/$P/global/images" "" "$exchanged"
expect 200 "the exchanged token works"
grant "$(jwt "{\"iss\":\"$SA\",\"aud\":\"https://oauth2.googleapis.com/token\",\"scope\":\"$scope\"}")"
expect 400 "aud is not the token URL"
check "d['error'] == 'invalid_grant'"
good="$(jwt "{\"iss\":\"$SA\",\"aud\":\"$TOKEN_URL\",\"scope\":\"$scope\"}")"
# One character in the middle of the signature changed (the last one may carry only padding bits).
grant "$(python3 -c 'import sys; h, c, s = sys.argv[1].split("."); print(f"{h}.{c}.{s[:20]}{"B" if s[20] != "B" else "C"}{s[21:]}")' "$good")"
expect 400 "signature tampered with"
grant "$(jwt "{\"iss\":\"$SA\",\"aud\":\"$TOKEN_URL\",\"scope\":\"$scope\",\"iat\":1000,\"exp\":4600}")"
expect 400 "expired assertion"
grant "$good" "client_credentials"
expect 400 "other grant types"
check "d['error'] == 'unsupported_grant_type'"
api GET "projects/$P/zones?maxResults=1" "" "$(jwt "{\"iss\":\"$SA\",\"sub\":\"$SA\",\"aud\":\"https://compute.googleapis.com/\"}")"
expect 200 "a self-signed JWT as the bearer token (aud https://compute.googleapis.com/)"

step "catalogue: zones (paged), regions, machine type, project, network, subnetwork"
api GET "projects/$P/zones?maxResults=4&prettyPrint=false"
expect 200
check "len(d['items']) == 4 and 'nextPageToken' in d and d['kind'] == 'compute#zoneList'"
page=$(j "d['nextPageToken']")
api GET "projects/$P/zones?maxResults=4&pageToken=$page"
check "len(d['items']) == 2 and 'nextPageToken' not in d"
api GET "projects/$P/zones?maxResults=4&pageToken=$page&filter=name%3Dus-%2A"
expect 400 "a page token of another query"
api GET "projects/$P/zones/$Z"
expect 200
check "d['region'] == '${API}projects/$P/regions/us-central1' and d['selfLink'].startswith('$API')"
api GET "projects/$P/regions?filter=name%20%3D%20europe-west1"
check "[r['name'] for r in d['items']] == ['europe-west1'] and len(d['items'][0]['zones']) == 3"
api GET "projects/$P/regions/us-central1"
expect 200
api GET "projects/$P/zones/$Z/machineTypes/e2-standard-2"
expect 200
check "d['guestCpus'] == 2 and d['memoryMb'] == 8192"
api GET "projects/$P/zones/mars-1a/machineTypes/e2-standard-2"
expect 400 "unknown zone"
api GET "projects/$P"
expect 200
check "d['name'] == '$P' and d['commonInstanceMetadata']['kind'] == 'compute#metadata'"
api GET "projects/$P/global/networks/default"
expect 200
api GET "projects/$P/regions/us-central1/subnetworks/default"
expect 200
check "d['ipCidrRange'] == '10.128.0.0/20'"

step "project scoping: public image projects are readable, others are not"
api GET "projects/debian-cloud/global/images/family/debian-12"
expect 200
check "d['name'] == 'debian-12-bookworm-v20261014'"
api GET "projects/debian-cloud/global/images"
check "sorted(i['name'] for i in d['items']) == ['debian-12-bookworm-v20260910', 'debian-12-bookworm-v20261014'] and d['items'][0]['deprecated']['state'] == 'DEPRECATED'"
api POST "projects/debian-cloud/global/images" '{"name":"mine","sourceImage":"projects/debian-cloud/global/images/family/debian-12"}'
expect 403 "no writes in a public image project"
api GET "projects/ubuntu-os-cloud/global/images/family/debian-12"
expect 404 "a public project without that family"
api GET "projects/kiln-other/global/images"
expect 403 "a project that exists but is not ours"
api GET "projects/no-such-project/global/images"
expect 404 "a project that does not exist"

step "a build the way Packer's googlecompute builder (v1.2.7) makes it"
name="packer-smoke-$(date +%s)"
api GET "projects/$P/global/images/$name"
expect 404 "StepCheckExistingImage: images.get"
api GET "projects/$P/zones/$Z"
expect 200 "RunInstance: zones.get"
api GET "projects/$P/zones/$Z/machineTypes/e2-standard-2"
expect 200 "RunInstance: machineTypes.get"
mt=$(j "d['selfLink']")
api GET "projects/debian-cloud/global/images/family/debian-12"
src=$(j "d['selfLink']")
body=$(
	cat <<-EOF
		{"advancedMachineFeatures":{},"disks":[{"autoDelete":false,"boot":true,"initializeParams":{"diskName":"$name",
		"diskSizeGb":"20","diskType":"zones/$Z/diskTypes/pd-standard","sourceImage":"$src"},"kind":"compute#attachedDisk",
		"mode":"READ_WRITE","type":"PERSISTENT"}],"labels":{"kiln-build":"smoke"},"machineType":"$mt",
		"metadata":{"items":[{"key":"block-project-ssh-keys","value":"TRUE"}]},"name":"$name",
		"networkInterfaces":[{"accessConfigs":[{"name":"AccessConfig created by Packer","type":"ONE_TO_ONE_NAT"}],
		"network":"global/networks/default"}],"scheduling":{"onHostMaintenance":"MIGRATE"},
		"serviceAccounts":[{"email":"default","scopes":["https://www.googleapis.com/auth/userinfo.email",
		"https://www.googleapis.com/auth/compute","https://www.googleapis.com/auth/devstorage.full_control"]}],"tags":{}}
	EOF
)
api POST "projects/$P/zones/$Z/instances" "$(echo "$body" | tr -d '\n\t')"
expect 200 "instances.insert"
check "d['kind'] == 'compute#operation' and d['status'] in ('PENDING', 'RUNNING') and d['zone'].endswith('/zones/$Z')"
op=$(j "d['selfLink']")
api GET "${op#"$API"}"
expect 200 "zoneOperations.get (what Packer polls)"
wait_op "$op"
api GET "projects/$P/zones/$Z/instances/$name"
check "d['status'] == 'RUNNING' and d['networkInterfaces'][0]['accessConfigs'][0]['natIP'].startswith('203.0.113.')"
api GET "projects/$P/zones/$Z/instances/$name/serialPort?port=1"
expect 200 "getSerialPortOutput"
check "'GCE Agent Started' in d['contents'] and int(d['next']) == len(d['contents'].encode())"
api GET "projects/$P/zones/$Z/disks/$name"
check "d['status'] == 'READY' and d['sizeGb'] == '20' and d['users'] == ['${API}projects/$P/zones/$Z/instances/$name']"
api POST "projects/$P/global/images" "{\"name\":\"$name\",\"sourceDisk\":\"/compute/v1/projects/$P/zones/$Z/disks/$name\"}"
expect 400 "an image of a disk in use by a running instance"
reason resourceInUseByAnotherResource
api DELETE "projects/$P/zones/$Z/instances/$name"
expect 200 "instances.delete"
wait_op "$(j "d['selfLink']")"
api GET "projects/$P/zones/$Z/instances/$name"
expect 404 "instance gone"
api GET "projects/$P/zones/$Z/disks/$name"
check "d['status'] == 'READY' and 'users' not in d"
api POST "projects/$P/global/images" "{\"name\":\"$name\",\"family\":\"kiln-smoke\",\"labels\":{\"kiln-namespace\":\"smoke\"},\"sourceDisk\":\"/compute/v1/projects/$P/zones/$Z/disks/$name\",\"sourceType\":\"RAW\",\"guestOsFeatures\":[{\"type\":\"UEFI_COMPATIBLE\"}]}"
expect 200 "images.insert from the disk (Packer's partial /compute/v1/ URL)"
check "d['status'] in ('PENDING', 'RUNNING')"
op=$(j "d['selfLink']")
api GET "projects/$P/global/images/$name"
check "d['status'] in ('PENDING', 'READY')"
wait_op "$op"
api GET "projects/$P/global/images/$name"
check "d['status'] == 'READY' and d['sourceDisk'] == '${API}projects/$P/zones/$Z/disks/$name' and d['diskSizeGb'] == '20'"
api POST "projects/$P/global/images/$name/deprecate" '{}'
expect 200 "images.deprecate with {} (Packer v1.2.x always sends it)"
api DELETE "projects/$P/zones/$Z/disks/$name"
expect 200 "disks.delete"
wait_op "$(j "d['selfLink']")"
api GET "projects/$P/zones/$Z/disks/$name"
expect 404 "disk gone"

step "images for kiln: seed (control), list with filter, pages, order, fields"
control images '{"name":"kiln-web-1","family":"kiln-web","labels":{"kiln-namespace":"a","kiln-build":"web"},"creationTimestamp":"2026-01-01T10:00:00Z"}' >/dev/null
control images '{"name":"kiln-web-2","family":"kiln-web","labels":{"kiln-namespace":"a","kiln-build":"web"},"creationTimestamp":"2026-02-01T10:00:00-08:00"}' >/dev/null
control images '{"name":"kiln-web-3","family":"kiln-web","labels":{"kiln-namespace":"a","kiln-build":"web"},"creationTimestamp":"2026-03-01T10:00:00.123-08:00"}' >/dev/null
control images '{"name":"kiln-db-1","family":"kiln-db","labels":{"kiln-namespace":"b"},"creationTimestamp":"2026-01-15T00:00:00Z","status":"FAILED"}' >/dev/null
control images '{"name":"kiln-db-2","family":"kiln-db","labels":{"kiln-namespace":"b"},"creationTimestamp":"2026-02-15T00:00:00Z","deprecated":"OBSOLETE"}'
check "d['deprecated']['state'] == 'OBSOLETE' and d['labels'] == {'kiln-namespace': 'b'}"
control images '{"name":"Bad_Name"}'
check "d['error']['code'] == 400"
api GET "projects/$P/global/images?filter=labels.kiln-namespace%20%3D%20%22a%22"
expect 200 "filter labels.kiln-namespace = \"a\""
check "sorted(i['name'] for i in d['items']) == ['kiln-web-1', 'kiln-web-2', 'kiln-web-3']"
api GET "projects/$P/global/images?filter=labels.kiln-namespace%3Da&maxResults=2"
check "len(d['items']) == 2 and 'nextPageToken' in d"
page=$(j "d['nextPageToken']")
api GET "projects/$P/global/images?filter=labels.kiln-namespace%3Da&maxResults=2&pageToken=$page"
check "[i['name'] for i in d['items']] == ['kiln-web-3'] and 'nextPageToken' not in d"
api GET "projects/$P/global/images?filter=name%20%3D%20%22kiln-db-1%22"
check "[(i['name'], i['status']) for i in d['items']] == [('kiln-db-1', 'FAILED')]"
api GET "projects/$P/global/images?filter=name%20eq%20kiln-web-.%2A"
check "len(d['items']) == 3"
api GET "projects/$P/global/images?filter=%28labels.kiln-namespace%20%3D%20%22b%22%29%20%28deprecated.state%20%3D%20OBSOLETE%29"
check "[i['name'] for i in d['items']] == ['kiln-db-2']"
api GET "projects/$P/global/images?filter=labels.kiln-namespace%3Aa%20AND%20creationTimestamp%20%3C%20%222026-02-15T00%3A00%3A00Z%22"
check "sorted(i['name'] for i in d['items']) == ['kiln-web-1', 'kiln-web-2']"
api GET "projects/$P/global/images?filter=labels.owner%3A%2A"
check "'items' not in d"
api GET "projects/$P/global/images?filter=colour%20%3D%20red"
expect 400 "a filter on a field the Image schema does not declare"
api GET "projects/$P/global/images?filter=labels.kiln-namespace%3D%22a%22&orderBy=creationTimestamp%20desc"
check "[i['name'] for i in d['items']] == ['kiln-web-3', 'kiln-web-2', 'kiln-web-1']"
api GET "projects/$P/global/images?orderBy=family"
expect 400 "orderBy other than name or creationTimestamp desc"
api GET "projects/$P/global/images?filter=labels.kiln-namespace%3Da&fields=items(name,labels),nextPageToken"
check "all(set(i) == {'name', 'labels'} for i in d['items']) and set(d) == {'items'}"
api GET "projects/$P/global/images?fields=items(name,colour)"
expect 400 "a fields selector naming an undeclared field"

step "setLabels with labelFingerprint"
api GET "projects/$P/global/images/kiln-web-1"
fp=$(j "d['labelFingerprint']")
api POST "projects/$P/global/images/kiln-web-1/setLabels" "{\"labelFingerprint\":\"$fp\",\"labels\":{\"kiln-namespace\":\"a\",\"kiln-retired\":\"true\"}}"
expect 200 "setLabels with the current fingerprint"
check "d['operationType'] == 'setLabels' and d['targetLink'].endswith('/global/images/kiln-web-1')"
api GET "projects/$P/global/images/kiln-web-1"
check "d['labels'] == {'kiln-namespace': 'a', 'kiln-retired': 'true'} and d['labelFingerprint'] != '$fp'"
api POST "projects/$P/global/images/kiln-web-1/setLabels" "{\"labelFingerprint\":\"$fp\",\"labels\":{}}"
expect 412 "a stale labelFingerprint"
reason conditionNotMet
api GET "projects/$P/global/images/kiln-web-1"
fp=$(j "d['labelFingerprint']")
api POST "projects/$P/global/images/kiln-web-1/setLabels" "{\"labelFingerprint\":\"$fp\",\"labels\":{\"Bad-Key\":\"x\"}}"
expect 400 "a label key with capitals"

step "deprecate, and getFromFamily skips deprecated images"
api GET "projects/$P/global/images/family/kiln-web"
check "d['name'] == 'kiln-web-3'"
api POST "projects/$P/global/images/kiln-web-3/deprecate" "{\"state\":\"DEPRECATED\",\"replacement\":\"${API}projects/$P/global/images/kiln-web-2\",\"obsolete\":\"2026-12-31T00:00:00Z\"}"
expect 200 "deprecate DEPRECATED"
api GET "projects/$P/global/images/kiln-web-3"
check "d['deprecated'] == {'state': 'DEPRECATED', 'replacement': '${API}projects/$P/global/images/kiln-web-2', 'obsolete': '2026-12-31T00:00:00Z'}"
api GET "projects/$P/global/images/family/kiln-web"
check "d['name'] == 'kiln-web-2'"
api GET "projects/$P/global/images?filter=deprecated.state%20%3D%20DEPRECATED"
check "[i['name'] for i in d['items']] == ['kiln-web-3']"
api POST "projects/$P/global/images/kiln-web-3/deprecate" '{"state":"ACTIVE"}'
expect 200 "deprecate ACTIVE (un-deprecate)"
api GET "projects/$P/global/images/family/kiln-web"
check "d['name'] == 'kiln-web-3'"
api POST "projects/$P/global/images/kiln-web-3/deprecate" '{"state":"RETIRED"}'
expect 400 "a state outside the enum"
api POST "projects/$P/global/images/kiln-web-3/deprecate" '{"state":"DEPRECATED","deleted":"next tuesday"}'
expect 400 "a deleted time that is not RFC 3339"
api GET "projects/$P/global/images/family/kiln-db"
expect 404 "a family whose images are all FAILED or OBSOLETE"

step "patch: family, description and deprecation status only"
api PATCH "projects/$P/global/images/kiln-web-2" '{"family":"kiln-web-next","description":"moved"}'
expect 200 "images.patch"
check "d['operationType'] == 'patch'"
api GET "projects/$P/global/images/kiln-web-2"
check "d['family'] == 'kiln-web-next' and d['description'] == 'moved'"
api PATCH "projects/$P/global/images/kiln-web-2" '{"family":"kiln-web"}'
expect 200 "back into its family"
api PATCH "projects/$P/global/images/kiln-web-2" '{"diskSizeGb":"20"}'
expect 400 "a field images.patch cannot change"
api PATCH "projects/$P/global/images/kiln-web-2" '{"family":"Kiln_Web"}'
expect 400 "a family that is not a name"

step "delete: DELETING until the operation is DONE"
# Slow operations down for this step, so that the check sees DELETING on a busy machine.
control config '{"operation_seconds":3}'
api DELETE "projects/$P/global/images/kiln-web-1"
expect 200
check "d['operationType'] == 'delete' and d['status'] in ('PENDING', 'RUNNING')"
op=$(j "d['selfLink']")
api GET "projects/$P/global/images/kiln-web-1"
check "d['status'] == 'DELETING'"
wait_op "$op"
control config "{\"operation_seconds\":$ops}"
api GET "projects/$P/global/images/kiln-web-1"
expect 404
reason notFound
api GET "projects/$P/global/operations?filter=operationType%3Ddelete"
check "all(o['operationType'] == 'delete' and o['status'] == 'DONE' for o in d['items']) and len(d['items']) >= 1"

step "requests the Discovery document refuses"
api GET "projects/$P/global/imagez"
expect 404 "a path not in the document"
api PUT "projects/$P/global/images/kiln-web-2"
expect 404 "a verb the document does not have for the path"
api POST "projects/$P/global/images" '{"name":"x1","sourceImage":"projects/debian-cloud/global/images/family/debian-12","architecture":"PPC64"}'
expect 400 "architecture outside the enum"
api POST "projects/$P/global/images" '{"name":"x1","sourceImage":"projects/debian-cloud/global/images/family/debian-12","colour":"red"}'
expect 400 "a property the Image schema does not declare"
check "'Unknown name \"colour\"' in d['error']['message']"
api POST "projects/$P/global/images" '{"name":"x1","sourceImage":"projects/debian-cloud/global/images/family/debian-12","diskSizeGb":10}'
expect 400 "an int64 sent as a JSON number (the document says string)"
api POST "projects/$P/global/images" '{"name":"Bad_Name","sourceImage":"projects/debian-cloud/global/images/family/debian-12"}'
expect 400 "a name against the schema's pattern"
api POST "projects/$P/global/images" '{"sourceImage":"projects/debian-cloud/global/images/family/debian-12"}'
expect 400 "no name (annotations.required for compute.images.insert)"
reason required
api POST "projects/$P/global/images" '{"name":"x1","guestOsFeatures":[{"type":"UEFI_COMPATIBLE","extra":1}],"sourceImage":"projects/debian-cloud/global/images/family/debian-12"}'
expect 400 "an undeclared property in a nested array item"
api GET "projects/$P/global/images?maxResults=abc"
expect 400 "maxResults not an integer"
api GET "projects/$P/global/images?maxResults=501"
expect 400 "maxResults above 500 (the description's limit; the document has no maximum)"
api GET "projects/$P/global/images?colour=red"
expect 400 "an unknown query parameter"
api GET "projects/$P/global/images?prettyPrint=yes"
expect 400 "a global parameter of the wrong type"
api GET "projects/$P/global/images/Bad_Name"
expect 400 "a path parameter against its pattern"
api POST "projects/$P/global/images" 'name=x' "$TOKEN" -H "Content-Type: application/x-www-form-urlencoded"
expect 400 "a body that is not JSON"
api POST "projects/$P/zones/$Z/instances/nothing/reset"
expect 501 "in the document but not implemented by the stand-in"

step "conflicts, idempotency, failed operations"
api POST "projects/$P/global/images" '{"name":"kiln-web-2","sourceImage":"projects/debian-cloud/global/images/family/debian-12"}'
expect 409 "an image of that name exists"
reason alreadyExists
rid=$(python3 -c 'import uuid; print(uuid.uuid4())')
api POST "projects/$P/global/images?requestId=$rid" '{"name":"kiln-copy","sourceImage":"projects/debian-cloud/global/images/family/debian-12"}'
expect 200 "images.insert with a requestId"
first=$(j "d['name']")
api POST "projects/$P/global/images?requestId=$rid" '{"name":"kiln-copy","sourceImage":"projects/debian-cloud/global/images/family/debian-12"}'
expect 200 "the same requestId again: the same operation, not a 409"
check "d['name'] == '$first'"
api POST "projects/$P/global/images?requestId=not-a-uuid" '{"name":"kiln-copy2","sourceImage":"projects/debian-cloud/global/images/family/debian-12"}'
expect 400 "a requestId that is not a UUID"
control fail-operations '{"count":1,"code":"QUOTA_EXCEEDED","message":"Quota IMAGES exceeded (stand-in)"}'
api POST "projects/$P/global/images" '{"name":"kiln-doomed","sourceImage":"projects/debian-cloud/global/images/family/debian-12"}'
op=$(j "d['selfLink']")
api POST "${op#"$API"}/wait"
api POST "${op#"$API"}/wait"
check "d['status'] == 'DONE' and d['error']['errors'][0]['code'] == 'QUOTA_EXCEEDED' and d['httpErrorStatusCode'] == 400"
api GET "projects/$P/global/images/kiln-doomed"
check "d['status'] == 'FAILED'"

step "rate limit: the next 2 requests answer 429 with Retry-After"
control ratelimit '{"count":2,"retry_after":7}'
api GET "projects/$P/global/images"
expect 429
reason rateLimitExceeded
grep -i '^retry-after' "$work/headers"
grep -qi '^retry-after: 7' "$work/headers" && ok "Retry-After: 7" || bad "no Retry-After"
api GET "projects/$P/global/images"
expect 429
api GET "projects/$P/global/images"
expect 200 "budget back"

step "rate limit as GCE answers it: 403 rateLimitExceeded without Retry-After"
control ratelimit '{"count":1,"status":403,"retry_after":null}'
api GET "projects/$P/global/images"
expect 403
reason rateLimitExceeded
grep -qi '^retry-after' "$work/headers" && bad "a Retry-After header" || ok "no Retry-After"
api GET "projects/$P/global/images"
expect 200 "budget back"

step "metadata server (Workload Identity): a token without a key"
code=$(curl -sS -o "$work/body" -w '%{http_code}' "http://$MDHOST/computeMetadata/v1/instance/service-accounts/default/token")
echo "<- $code $(head -c 200 "$work/body")"
expect 403 "no Metadata-Flavor header"
code=$(curl -sS -o "$work/body" -D "$work/headers" -w '%{http_code}' -H 'Metadata-Flavor: Google' "http://$MDHOST/computeMetadata/v1/instance/service-accounts/default/token")
echo "<- $code $(head -c 200 "$work/body")"
expect 200 "a token"
grep -qi '^metadata-flavor: google' "$work/headers" && ok "Metadata-Flavor: Google" || bad "no Metadata-Flavor header"
MDTOKEN=$(j "d['access_token']")
api GET "projects/$P/zones/$Z" "" "$MDTOKEN"
expect 200 "the metadata token works on the API"

step "response validation: the stand-in breaks its next response on purpose"
control malform '{"count":1}'
api GET "projects/$P/global/images/kiln-web-2"
expect 500 "the response check caught it"
check "'does not match Image' in d['error']['message'] and 'standinMalformed' in d['error']['message']"
grep 'RESPONSE INVALID' "$LOG" | tail -n 1 | cut -c1-250

step "control: counters and the request log"
control state '' GET >/dev/null
python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))["counts"]; print("   counts:", json.dumps(c, sort_keys=True))' "$work/body"
check "d['counts']['response_validation_failures'] == 1 and d['counts']['request_validation_failures'] >= 10 and d['counts'].get('crashes', 0) == 0"
control "requests?since=0" '' GET >/dev/null
check "any(r['method'] == 'compute.instances.insert' for r in d['requests'])"

step "latency: 200 keep-alive requests (images.get, prettyPrint=false)"
python3 - "$API" "$TOKEN" "$P" <<-'EOF'
	import http.client, statistics, sys, time, urllib.parse
	api, token, project = sys.argv[1:4]
	u = urllib.parse.urlsplit(api)
	conn = http.client.HTTPConnection(u.hostname, u.port)
	times = []
	for i in range(200):
	    t = time.perf_counter()
	    conn.request("GET", f"{u.path}projects/{project}/global/images/kiln-web-2?prettyPrint=false",
	                 headers={"Authorization": f"Bearer {token}"})
	    r = conn.getresponse()
	    r.read()
	    assert r.status == 200, r.status
	    times.append((time.perf_counter() - t) * 1000)
	times.sort()
	print(f"   images.get: median {statistics.median(times):.2f} ms, p95 {times[189]:.2f} ms, max {times[-1]:.2f} ms")
	t = time.perf_counter()
	conn.request("GET", f"{u.path}projects/{project}/global/images?prettyPrint=false",
	             headers={"Authorization": f"Bearer {token}"})
	r = conn.getresponse(); r.read()
	print(f"   images.list: {(time.perf_counter() - t) * 1000:.2f} ms")
EOF

if [ "${GO_CLIENT:-0}" = 1 ]; then
	step "Google's Go client (google.golang.org/api/compute/v1 v0.311.0) against the stand-in"
	g0=$(date +%s.%N)
	if (cd "$here/goclient" && go build -o "$work/goclient" .); then
		echo "go build took $(awk -v a="$g0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')s"
		"$work/goclient" "$ready" | tee "$work/goclient.out" || true
		passed=$((passed + $(grep -c '^   ok:' "$work/goclient.out" || true)))
		failed=$((failed + $(grep -c '^   FAILED:' "$work/goclient.out" || true)))
		grep -q '^go client: 0 failures' "$work/goclient.out" || bad "go client did not finish cleanly"
	else
		bad "go build of hack/gce/goclient failed"
	fi
fi

step "stop: SIGTERM to run.py stops the stand-in"
pids=$(python3 -c 'import json,sys; print(" ".join(map(str, json.loads(sys.argv[1])["pids"])))' "$ready")
kill -TERM "$run_pid"
wait "$run_pid" || true
run_pid=""
alive=""
for p in $pids; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
[ -z "$alive" ] && ok "stand-in $pids gone" || bad "still running:$alive"

smoke_done=1
echo
echo "smoke: $passed passed, $failed failed"
[ "$failed" = 0 ]
