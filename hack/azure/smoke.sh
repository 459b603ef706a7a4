#!/usr/bin/env bash
# Smoke test of the Azure Resource Manager stand-in (README.md beside this
# file): starts it with run.py, goes with curl through every route (Entra ID
# tokens, galleries, image definitions, image versions, managed images, the
# resource provider (Providers_Get), the long-running operations and their status URLs), the control API's failure
# injection, the auth failures and the validator's rejections, then stops it.
# It does all of that once per schema source: SMOKE_SCHEMAS (default
# "auto sdk": the Swagger files when they are there, then the
# azure-mgmt-compute and azure-mgmt-resource fallback forced with
# KILN_AZURE_SCHEMAS=sdk).
# Prints what each step sent and got back, and "smoke: N passed, N failed" last.
# KEEP_WORK=1 keeps its temporary directory (logs).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/setup.sh"
cache_root="${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}"
py="$cache_root/venv/bin/python3"
[ -x "$py" ] || py=python3

work="$(mktemp -d -t kiln-azure-smoke-XXXXXX)"
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
step() { echo; echo "### [$mode] $*"; }
# j EXPR: a Python expression over the last body (as d) and headers (as h, lower-case keys).
j() {
	"$py" -c '
import json, os, sys
h = {}
for line in open(sys.argv[2], errors="replace"):
    k, sep, v = line.partition(":")
    if sep:
        h[k.strip().lower()] = v.strip()
try:
    raw = open(sys.argv[1]).read()
    d = json.loads(raw) if raw.strip() else None
    print(eval(sys.argv[3]))
except Exception as e:
    print(f"({type(e).__name__}: {e})")' "$work/body" "$work/headers" "$1"
}
check() { if [ "$(j "$1")" = "True" ]; then ok "$1"; else bad "$1 (got: $(tr -d '\n' <"$work/body" | head -c 300))"; fi; }
expect() { if [ "$code" = "$1" ]; then ok "HTTP $code${2:+: $2}"; else bad "wanted HTTP $1, got $code${2:+: $2}"; fi; }
# error CODE [TEXT]: the ARM error code of the last body, and a text its message names.
error() {
	check "d['error']['code'] == '$1'"
	[ -z "${2:-}" ] || T="$2" check "os.environ['T'] in d['error']['message']"
}
show() {
	echo "-> $1"
	echo "<- $code $(tr -d '\n' <"$work/body" | tr -s ' ' | head -c 500)$([ "$(wc -c <"$work/body")" -gt 500 ] && echo ' ...')"
}
# arm METHOD PATH [JSON] [TOKEN|-] [CURL ARGS...]: PATH relative to api_url
# (or a full URL). Sets $code; body in $work/body, headers in $work/headers.
arm() {
	local method=$1 path=$2 data=${3:-} tok=${4:-$TOKEN} args=() url
	shift 4 2>/dev/null || shift $#
	[ "$tok" = "-" ] || args+=(-H "Authorization: Bearer $tok")
	[ -z "$data" ] || args+=(--data "$data")
	[ -z "$data" ] || [ $# -gt 0 ] || args+=(-H "Content-Type: application/json")
	case "$path" in http*) url="$path" ;; *) url="$API$path" ;; esac
	code=$(curl -sS -o "$work/body" -D "$work/headers" -w '%{http_code}' -X "$method" "${args[@]}" "$@" "$url")
	show "$method ${url#"$API"}${data:+ $data}"
}
# token FORM...: a POST to the Entra ID token endpoint (form fields as curl -d args).
token() {
	local tenant=$1
	shift
	code=$(curl -sS -o "$work/body" -D "$work/headers" -w '%{http_code}' "$@" "$AUTH$tenant/oauth2/v2.0/token")
	show "POST /$tenant/oauth2/v2.0/token $(printf '%s ' "$@" | sed -E 's/(client_secret=)[^ ]+/\1.../; s/(client_assertion=)[^ ]{20}[^ ]*/\1.../')"
}
control() {
	local method=$1 what=$2 data=${3:-}
	code=$(curl -sS -o "$work/body" -D "$work/headers" -w '%{http_code}' -X "$method" \
		-H 'Content-Type: application/json' ${data:+--data "$data"} "$CONTROL$what")
	show "control $method /_control/$what $data"
}
header() { j "h.get('${1,,}', '')"; }
# poll_done URL STATUS: GET the Azure-AsyncOperation URL until it is not InProgress.
poll_done() {
	local url=$1 want=$2 i
	for i in 1 2 3 4 5 6; do
		arm GET "$url" >/dev/null
		[ "$(j "d.get('status')")" = InProgress ] || break
	done
	show "GET ${url#"$API"} (poll $i)"
	check "d['status'] == '$want'"
}
jwt() { # jwt CLAIMS_JSON: an unsigned-looking JWT (the stand-in does not check signatures)
	"$py" -c '
import base64, json, sys
e = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
print(e(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "k1"}).encode()) + "." + e(sys.argv[1].encode()) + ".c2ln")' "$1"
}

smoke_mode() {
	mode=$1
	local info="$work/$mode.ready" log_dir="$work/$mode"
	step "start run.py with KILN_AZURE_SCHEMAS=$mode"
	KILN_AZURE_SCHEMAS=$mode python3 "$here/run.py" --log-dir "$log_dir" >"$info" &
	run_pid=$!
	for _ in $(seq 1 300); do
		[ -s "$info" ] && break
		kill -0 "$run_pid" 2>/dev/null || {
			bad "run.py exited"
			return
		}
		sleep 0.1
	done
	cat "$info"
	r() { "$py" -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$info" "$1"; }
	API=$(r "d['api_url']")
	AUTH=$(r "d['authority_host']")
	CONTROL=$(r "d['control_url']")
	TENANT=$(r "d['tenant_id']")
	CID=$(r "d['client_id']")
	SECRET=$(r "d['client_secret']")
	S=$(r "d['subscription_id']")
	OTHER=$(r "d['other_subscription_id']")
	RG=$(r "d['resource_group']")
	G=$(r "d['gallery']")
	D=$(r "d['image_definition']")
	GAPI=2024-03-03
	IAPI=$(r "d['api_versions']['images']")
	RAPI=$(r "d['api_versions']['providers']")
	local schemas
	schemas=$(r "d['schemas']")
	cp "$info" "$work/body"
	: >"$work/headers"
	check "sorted(k for k in ['api_url', 'authority_host', 'tenant_id', 'client_id', 'client_secret', 'subscription_id', 'resource_group', 'gallery', 'image_definition', 'locations', 'control_url', 'schemas'] if k in d) == sorted(['api_url', 'authority_host', 'tenant_id', 'client_id', 'client_secret', 'subscription_id', 'resource_group', 'gallery', 'image_definition', 'locations', 'control_url', 'schemas'])"
	check "d['resource_group'] == 'kiln-test' and d['gallery'] == 'kilngallery' and d['image_definition'] == 'base' and d['locations'] == ['westeurope', 'eastus2']"
	# auto takes the Swagger when it finds it (../shared, $KILN_AZURE_SPECS or
	# the cache), else the SDK; what follows depends on what was loaded.
	local from_sdk=1
	case "$schemas" in "spec files "*) from_sdk=0 ;; esac
	if [ "$mode" = sdk ]; then
		check "d['schemas'] == 'azure-mgmt-compute==37.1.0 (galleries and images); providers: azure-mgmt-resource==25.0.0'"
	elif [ "$from_sdk" = 0 ]; then
		check "d['schemas'].startswith('spec files ') and d['schemas'].endswith('(GalleryRP 2024-03-03, resources 2025-04-01); images: azure-mgmt-compute==37.1.0')"
	else
		echo "   note: no Swagger files found, auto fell back to the SDK"
		check "d['schemas'] == 'azure-mgmt-compute==37.1.0 (galleries and images); providers: azure-mgmt-resource==25.0.0'"
	fi
	check "d['api_versions'] == {'galleries': '2024-03-03', 'images': '2025-04-01', 'providers': '2025-04-01'}"
	echo "   schemas: $schemas"
	GAL="subscriptions/$S/resourceGroups/$RG/providers/Microsoft.Compute/galleries/$G"
	DEF="$GAL/images/$D"
	VER="$DEF/versions"
	IMG="subscriptions/$S/resourceGroups/$RG/providers/Microsoft.Compute/images"
	SCOPE=https://management.azure.com/.default

	step "Entra ID: client credentials with a secret, and refusals"
	token "$TENANT" -d grant_type=client_credentials -d "client_id=$CID" -d "client_secret=$SECRET" -d "scope=$SCOPE"
	expect 200
	check "d['token_type'] == 'Bearer' and d['expires_in'] > 3000 and d['access_token'].count('.') == 2"
	TOKEN=$(j "d['access_token']")
	token "$TENANT" -d grant_type=client_credentials -d "client_id=$CID" -d "client_secret=wrong" -d "scope=$SCOPE"
	expect 401 "wrong secret"
	check "d['error'] == 'invalid_client' and d['error_description'].startswith('AADSTS7000215') and d['error_codes'] == [7000215]"
	token "$TENANT" -d grant_type=client_credentials -d "client_id=00000000-0000-0000-0000-000000000000" -d "client_secret=x" -d "scope=$SCOPE"
	expect 400 "unknown client"
	check "d['error'] == 'unauthorized_client' and 'AADSTS700016' in d['error_description']"
	token 11111111-1111-1111-1111-111111111111 -d grant_type=client_credentials -d "client_id=$CID" -d "client_secret=$SECRET" -d "scope=$SCOPE"
	expect 400 "unknown tenant"
	check "'AADSTS90002' in d['error_description']"
	token "$TENANT" -d grant_type=client_credentials -d "client_id=$CID" -d "client_secret=$SECRET" -d "scope=https://graph.microsoft.com/.default"
	expect 400 "scope of another resource"
	check "d['error'] == 'invalid_scope'"
	token "$TENANT" -d grant_type=password -d "client_id=$CID" -d "client_secret=$SECRET" -d "scope=$SCOPE"
	expect 400 "grant type"
	check "d['error'] == 'unsupported_grant_type'"
	token "$TENANT" -d grant_type=client_credentials -d "client_id=$CID" -d "scope=$SCOPE"
	expect 401 "no secret, no assertion"
	check "'AADSTS7000218' in d['error_description']"

	step "Entra ID: workload identity federation (client assertion)"
	local exp assertion
	exp=$(($(date +%s) + 600))
	assertion=$(jwt "{\"iss\":\"https://kubernetes.default.svc\",\"sub\":\"system:serviceaccount:kiln-system:kiln\",\"aud\":[\"api://AzureADTokenExchange\"],\"exp\":$exp}")
	token "$TENANT" -d grant_type=client_credentials -d "client_id=$CID" -d "scope=$SCOPE" \
		-d client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer -d "client_assertion=$assertion"
	expect 200 "federated token accepted"
	local wif_token
	wif_token=$(j "d['access_token']")
	token "$TENANT" -d grant_type=client_credentials -d "client_id=$CID" -d "scope=$SCOPE" \
		-d client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer -d "client_assertion=not-a-jwt"
	expect 400 "malformed assertion"
	check "'AADSTS50027' in d['error_description']"
	assertion=$(jwt "{\"sub\":\"system:serviceaccount:kiln-system:kiln\",\"aud\":\"https://example.com\",\"exp\":$exp}")
	token "$TENANT" -d grant_type=client_credentials -d "client_id=$CID" -d "scope=$SCOPE" \
		-d client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer -d "client_assertion=$assertion"
	expect 400 "assertion for another audience"
	assertion=$(jwt "{\"sub\":\"system:serviceaccount:kiln-system:kiln\",\"aud\":\"api://AzureADTokenExchange\",\"exp\":1000}")
	token "$TENANT" -d grant_type=client_credentials -d "client_id=$CID" -d "scope=$SCOPE" \
		-d client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer -d "client_assertion=$assertion"
	expect 400 "expired assertion"
	check "'AADSTS700024' in d['error_description']"
	arm GET "$TENANT/v2.0/.well-known/openid-configuration" "" -
	expect 200 "OpenID discovery"
	check "d['token_endpoint'] == '$AUTH$TENANT/oauth2/v2.0/token'"
	arm GET "$GAL?api-version=$GAPI" "" "$wif_token"
	expect 200 "the federated token works on ARM"

	step "ARM authentication and authorization"
	arm GET "$GAL?api-version=$GAPI" "" -
	expect 401 "no Authorization header"
	error AuthenticationFailed "'Authorization' header is missing"
	check "h['www-authenticate'].startswith('Bearer authorization_uri=\"$AUTH$TENANT\"')"
	arm GET "$GAL?api-version=$GAPI" "" "not-a-token"
	expect 401 "a token the stand-in did not issue"
	error InvalidAuthenticationToken
	control POST principals "{\"name\": \"other-project\"}"
	expect 200 "a principal with access to another subscription only"
	local other_cid other_secret other_token
	other_cid=$(j "d['client_id']")
	other_secret=$(j "d['client_secret']")
	check "d['subscription_id'] == '$OTHER'"
	token "$TENANT" -d grant_type=client_credentials -d "client_id=$other_cid" -d "client_secret=$other_secret" -d "scope=$SCOPE"
	expect 200
	other_token=$(j "d['access_token']")
	arm GET "$GAL?api-version=$GAPI" "" "$other_token"
	expect 403 "the key for the wrong subscription"
	error AuthorizationFailed "does not have authorization to perform action 'Microsoft.Compute/galleries/read'"
	arm GET "subscriptions/$OTHER/resourceGroups/kiln-other/providers/Microsoft.Compute/galleries?api-version=$GAPI" "" "$other_token"
	expect 200 "its own subscription"
	check "d['value'] == []"
	arm GET "subscriptions/$OTHER/resourceGroups/kiln-other/providers/Microsoft.Compute/galleries?api-version=$GAPI"
	expect 403 "the main principal in the other subscription"
	arm GET "subscriptions/not-a-guid/resourceGroups/$RG/providers/Microsoft.Compute/galleries/$G?api-version=$GAPI"
	expect 400 "malformed subscription id"
	error InvalidSubscriptionId
	control POST expire-tokens
	arm GET "$GAL?api-version=$GAPI"
	expect 401 "expired token"
	error ExpiredAuthenticationToken
	token "$TENANT" -d grant_type=client_credentials -d "client_id=$CID" -d "client_secret=$SECRET" -d "scope=$SCOPE"
	TOKEN=$(j "d['access_token']")

	step "galleries and image definitions"
	arm GET "$GAL?api-version=$GAPI"
	expect 200
	check "d['name'] == '$G' and d['location'] == 'westeurope' and d['type'] == 'Microsoft.Compute/galleries' and d['properties']['provisioningState'] == 'Succeeded'"
	check "d['id'] == '/$GAL'"
	arm GET "subscriptions/$S/resourceGroups/$RG/providers/Microsoft.Compute/galleries/nosuchgallery?api-version=$GAPI"
	expect 404 "missing gallery"
	error ResourceNotFound "galleries/nosuchgallery"
	arm GET "subscriptions/$S/resourceGroups/nosuchrg/providers/Microsoft.Compute/galleries/$G?api-version=$GAPI"
	expect 404 "missing resource group"
	error ResourceGroupNotFound
	arm GET "subscriptions/$S/resourceGroups/$RG/providers/Microsoft.Compute/galleries?api-version=$GAPI"
	expect 200 "galleries by resource group"
	check "[g['name'] for g in d['value']] == ['$G']"
	arm GET "$DEF?api-version=$GAPI"
	expect 200 "image definition"
	p="d['properties']"
	check "$p['osType'] == 'Linux' and $p['osState'] == 'Generalized' and $p['hyperVGeneration'] == 'V2' and d['location'] == 'westeurope'"
	arm GET "$GAL/images?api-version=$GAPI"
	expect 200 "image definitions list"
	check "[i['name'] for i in d['value']] == ['$D']"
	arm GET "$GAL/images/nosuch?api-version=$GAPI"
	expect 404
	error ResourceNotFound
	arm GET "$GAL/applications?api-version=$GAPI"
	expect 501 "in the schemas, not implemented"
	error NotImplemented

	step "resource provider: Providers_Get (Microsoft.Resources $RAPI)"
	local prov="subscriptions/$S/providers/Microsoft.Compute"
	arm GET "$prov?api-version=$RAPI"
	expect 200 "Microsoft.Compute"
	check "d['id'] == '/$prov' and d['namespace'] == 'Microsoft.Compute' and d['registrationState'] == 'Registered'"
	check "[t['resourceType'] for t in d['resourceTypes']] == ['galleries', 'galleries/images', 'galleries/images/versions', 'images']"
	check "all(t['locations'][:3] == ['West Europe', 'East US 2', 'North Europe'] and len(t['locations']) == len(set(t['locations'])) == 12 for t in d['resourceTypes'])"
	check "[t['apiVersions'] for t in d['resourceTypes']] == [['$GAPI']] * 3 + [['$IAPI']]"
	arm GET "subscriptions/$S/providers/microsoft.compute?api-version=$RAPI&%24expand=resourceTypes%2Faliases"
	expect 200 "the namespace in lower case, and \$expand"
	check "d['namespace'] == 'Microsoft.Compute'"
	arm GET "subscriptions/$S/providers/Microsoft.Nothing?api-version=$RAPI"
	expect 404 "a namespace the stand-in does not know"
	error InvalidResourceNamespace "'Microsoft.Nothing'"
	arm GET "$prov?api-version=2099-01-01"
	expect 400 "unknown api-version (Microsoft.Resources' own error)"
	error InvalidApiVersionParameter "'2099-01-01'"
	arm GET "$prov"
	expect 400 "no api-version"
	error MissingApiVersionParameter
	arm GET "$prov?api-version=$RAPI&colour=blue"
	expect 400 "undeclared query parameter"
	error InvalidQueryParameter "'colour'"
	arm DELETE "$prov?api-version=$RAPI"
	expect 405 "a verb the path does not have"
	arm GET "$prov?api-version=$RAPI" "" -
	expect 401 "no Authorization header"
	error AuthenticationFailed
	token "$TENANT" -d grant_type=client_credentials -d "client_id=$other_cid" -d "client_secret=$other_secret" -d "scope=$SCOPE"
	other_token=$(j "d['access_token']")
	arm GET "$prov?api-version=$RAPI" "" "$other_token"
	expect 403 "a principal without access to the subscription"
	error AuthorizationFailed "does not have authorization to perform action 'Microsoft.Resources/subscriptions/providers/read' over scope '/$prov'"
	arm GET "subscriptions/$OTHER/providers/Microsoft.Compute?api-version=$RAPI" "" "$other_token"
	expect 200 "the same principal on its own subscription"
	check "d['id'] == '/subscriptions/$OTHER/providers/Microsoft.Compute'"
	control GET calls
	check "d['calls']['Providers_Get'] == 7"

	step "validation: paths, api-versions, query parameters"
	arm GET "$GAL/imagez/$D?api-version=$GAPI"
	expect 400 "wrong path"
	error InvalidResourceType "galleries/imagez"
	arm GET "$GAL?api-version=2099-01-01"
	expect 400 "unknown api-version"
	error NoRegisteredProviderFound "'2099-01-01'"
	arm GET "$GAL"
	expect 400 "no api-version"
	error MissingApiVersionParameter
	arm GET "$IMG?api-version=$GAPI"
	expect 400 "the galleries' api-version on managed images"
	error NoRegisteredProviderFound "'$IAPI'"
	arm GET "$GAL?api-version=$GAPI&colour=blue"
	expect 400 "undeclared query parameter"
	error InvalidQueryParameter "'colour'"
	arm GET "$VER/1.0.0?api-version=$GAPI&%24expand=Everything"
	expect 400 "bad \$expand enum"
	error InvalidParameter '"Everything" is not an allowed value: one of ReplicationStatus, UefiSettings'
	arm POST "$GAL?api-version=$GAPI" "{}"
	expect 405 "a verb the path does not have"

	local src="/subscriptions/$S/resourceGroups/$RG/providers/Microsoft.Compute/images/packer-build-1"
	local good="{\"location\": \"westeurope\", \"tags\": {\"kiln-build\": \"b1\"}, \"properties\": {\"publishingProfile\": {\"targetRegions\": [{\"name\": \"westeurope\", \"regionalReplicaCount\": 1, \"storageAccountType\": \"Standard_LRS\"}, {\"name\": \"eastus2\", \"regionalReplicaCount\": 2, \"storageAccountType\": \"Standard_ZRS\"}], \"endOfLifeDate\": \"2099-01-01T00:00:00Z\"}, \"storageProfile\": {\"source\": {\"id\": \"$src\"}}, \"safetyProfile\": {\"allowDeletionOfReplicatedLocations\": true}}}"

	step "validation: request bodies"
	arm PUT "$VER/1.0.0?api-version=$GAPI" "{\"location\": \"westeurope\", \"colour\": \"blue\", \"properties\": {\"storageProfile\": {\"source\": {\"id\": \"$src\"}}}}"
	expect 400 "undeclared field"
	error InvalidRequestContent "undeclared property 'colour'"
	arm PUT "$VER/1.0.0?api-version=$GAPI" "{\"location\": \"westeurope\", \"properties\": {\"publishingProfile\": {\"storageAccountType\": \"Premium_XYZ\"}, \"storageProfile\": {\"source\": {\"id\": \"$src\"}}}}"
	expect 400 "bad enum value"
	error InvalidRequestContent "'properties.publishingProfile.storageAccountType' = \"Premium_XYZ\" is not an allowed value"
	arm PUT "$VER/1.0.0?api-version=$GAPI" "{\"location\": \"westeurope\", \"properties\": {\"publishingProfile\": {\"replicaCount\": \"3\"}, \"storageProfile\": {\"source\": {\"id\": \"$src\"}}}}"
	expect 400 "wrong type"
	error InvalidRequestContent "must be an integer"
	arm PUT "$VER/1.0.0?api-version=$GAPI" "{\"properties\": {\"storageProfile\": {\"source\": {\"id\": \"$src\"}}}}"
	expect 400 "missing required field"
	error InvalidRequestContent "required property 'location' is missing"
	arm PUT "$VER/1.0.0?api-version=$GAPI" "{\"location\": \"westeurope\", \"properties\": {\"provisioningState\": \"Succeeded\", \"storageProfile\": {\"source\": {\"id\": \"$src\"}}}}"
	expect 400 "a read-only field sent by the client"
	error InvalidRequestContent "'properties.provisioningState' is read-only"
	arm PUT "$VER/1.0.0?api-version=$GAPI" "{\"location\": \"westeurope\", \"properties\": {\"publishingProfile\": {\"endOfLifeDate\": \"next tuesday\"}, \"storageProfile\": {\"source\": {\"id\": \"$src\"}}}}"
	expect 400 "not a date-time"
	error InvalidRequestContent "RFC 3339"
	arm PUT "$VER/1.0.0?api-version=$GAPI" "{\"location\": \"westeurope\", \"colour\": 1, \"properties\": {\"publishingProfile\": {\"replicaCount\": true, \"storageAccountType\": \"x\"}}}"
	expect 400 "several problems at once"
	check "len(d['error']['details']) >= 3 and d['error']['message'].endswith('see details)')"
	arm PUT "$VER/1.0.0?api-version=$GAPI" "not json"
	expect 400 "not JSON"
	arm PUT "$VER/1.0.0?api-version=$GAPI" "$good" "$TOKEN" -H "Content-Type: text/plain"
	expect 415 "not application/json"
	arm PUT "$VER/1.0.0?api-version=$GAPI"
	expect 400 "no body"
	arm PUT "$VER/1.0.0?api-version=$GAPI" "{\"location\": \"atlantis\", \"properties\": {\"storageProfile\": {\"source\": {\"id\": \"$src\"}}}}"
	expect 400 "unknown location"
	error LocationNotAvailableForResourceType "'atlantis'"
	arm PUT "$VER/1.0.0?api-version=$GAPI" "{\"location\": \"westeurope\", \"properties\": {\"publishingProfile\": {\"targetRegions\": [{\"name\": \"westeurope\"}, {\"name\": \"moon-1\"}]}, \"storageProfile\": {\"source\": {\"id\": \"$src\"}}}}"
	expect 400 "unknown target region"
	check "d['error']['target'] == 'properties.publishingProfile.targetRegions[1].name'"
	arm PUT "$VER/latest?api-version=$GAPI" "$good"
	expect 400 "version name not Major.Minor.Patch"
	error InvalidParameter "'latest'"
	arm PUT "$VER/1.0.0?api-version=$GAPI" "{\"location\": \"westeurope\", \"tags\": {\"kiln.dev/build\": \"b1\"}, \"properties\": {\"storageProfile\": {\"source\": {\"id\": \"$src\"}}}}"
	expect 400 "a tag name with '/' (Azure forbids <>%&\\?/ in tag names)"
	error InvalidTagNameCharacters "kiln.dev/build"
	arm PUT "$VER/1.0.0?api-version=$GAPI" "{\"location\": \"westeurope\"}"
	expect 400 "a new version without a source"
	error InvalidParameter "storageProfile.source"
	arm PUT "$GAL/images/nosuch/versions/1.0.0?api-version=$GAPI" "$good"
	expect 404 "under a missing image definition"
	error ParentResourceNotFound

	step "image version: create (long-running PUT)"
	arm PUT "$VER/1.0.0?api-version=$GAPI" "$good"
	expect 201 "created"
	check "d['properties']['provisioningState'] == 'Creating' and d['name'] == '1.0.0' and d['type'] == 'Microsoft.Compute/galleries/images/versions'"
	check "h['azure-asyncoperation'].startswith('${API}subscriptions/$S/providers/Microsoft.Compute/locations/westeurope/capsOperations/') and h['azure-asyncoperation'].endswith('?api-version=$GAPI')"
	check "h['retry-after'] == '0' and 'location' not in h"
	check "[t['name'] for t in d['properties']['publishingProfile']['targetRegions']] == ['westeurope', 'eastus2'] and d['properties']['publishingProfile']['publishedDate'] and d['tags'] == {'kiln-build': 'b1'}"
	local op_url
	op_url=$(header Azure-AsyncOperation)
	arm GET "$VER/1.0.0?api-version=$GAPI"
	expect 200 "before any poll"
	check "d['properties']['provisioningState'] == 'Creating'"
	poll_done "$op_url" Succeeded
	check "'startTime' in d and 'endTime' in d and 'error' not in d"
	arm GET "$VER/1.0.0?api-version=$GAPI"
	expect 200 "after the operation"
	check "d['properties']['provisioningState'] == 'Succeeded' and 'replicationStatus' not in d['properties']"
	arm GET "$VER/1.0.0?api-version=$GAPI&%24expand=ReplicationStatus"
	expect 200 "\$expand=ReplicationStatus"
	check "d['properties']['replicationStatus']['aggregatedState'] == 'Completed' and [(s['region'], s['state'], s['progress']) for s in d['properties']['replicationStatus']['summary']] == [('westeurope', 'Completed', 100), ('eastus2', 'Completed', 100)]"
	arm GET "$op_url" "" -
	expect 401 "the status URL needs a token too"

	step "image version: polls and Retry-After are configurable"
	control POST config '{"polls": 3, "retry_after": 1}'
	arm PUT "$VER/1.0.0?api-version=$GAPI" "$good"
	expect 200 "PUT on an existing version updates"
	check "d['properties']['provisioningState'] == 'Updating' and h['retry-after'] == '1'"
	op_url=$(header Azure-AsyncOperation)
	arm GET "$op_url"
	check "d['status'] == 'InProgress' and h['retry-after'] == '1'"
	arm GET "$op_url"
	check "d['status'] == 'InProgress'"
	arm GET "$op_url"
	check "d['status'] == 'Succeeded'"
	control POST config '{"polls": 1, "retry_after": 0}'

	step "image version: PATCH (tags, excludeFromLatest, endOfLifeDate)"
	local patch='{"tags": {"kiln-build": "b1", "kiln-superseded": "true"}, "properties": {"publishingProfile": {"excludeFromLatest": true, "endOfLifeDate": "2030-06-30T00:00:00Z"}, "storageProfile": {}}}'
	arm PATCH "$VER/1.0.0?api-version=$GAPI" "$patch"
	expect 200
	check "d['properties']['provisioningState'] == 'Updating' and bool(h['azure-asyncoperation'])"
	poll_done "$(header Azure-AsyncOperation)" Succeeded
	arm GET "$VER/1.0.0?api-version=$GAPI"
	check "d['tags'] == {'kiln-build': 'b1', 'kiln-superseded': 'true'} and d['properties']['publishingProfile']['excludeFromLatest'] is True and d['properties']['publishingProfile']['endOfLifeDate'].startswith('2030-06-30T00:00:00')"
	check "d['properties']['provisioningState'] == 'Succeeded'"
	arm PATCH "$VER/1.0.0?api-version=$GAPI" '{"properties": {"publishingProfile": {"excludeFromLatest": false}}}'
	if [ "$from_sdk" = 1 ]; then
		expect 200 "PATCH without storageProfile: the SDK does not require it"
		poll_done "$(header Azure-AsyncOperation)" Succeeded
	else
		expect 400 "PATCH without storageProfile: the Swagger requires it (see README)"
		error InvalidRequestContent "'properties.storageProfile' is missing"
	fi
	arm PATCH "$VER/9.9.9?api-version=$GAPI" "$patch"
	expect 404 "PATCH of a missing version"
	arm PATCH "$VER/1.0.0?api-version=$GAPI" '{"properties": {"publishingProfile": {"publishedDate": "2020-01-01T00:00:00Z"}, "storageProfile": {}}}'
	expect 400 "publishedDate is read-only"
	arm PATCH "$VER/1.0.0?api-version=$GAPI" '{"location": "westeurope"}'
	expect 400 "location is not in the update model"
	error InvalidRequestContent "undeclared property 'location'"

	step "image versions: list with nextLink paging"
	local day=0
	for v in 0.1.0 0.2.0 0.3.0 2.0.0; do
		day=$((day + 1))
		control POST image-versions "{\"name\": \"$v\", \"tags\": {\"kiln-build\": \"seed-$v\"}, \"publishedDate\": \"2026-01-0${day}T00:00:00Z\", \"targetRegions\": [\"westeurope\", \"eastus2\"]}"
	done
	expect 200
	control POST config '{"page_size": 2}'
	arm GET "$VER?api-version=$GAPI"
	expect 200 "page 1"
	check "[v['name'] for v in d['value']] == ['0.1.0', '0.2.0'] and d['nextLink'].startswith('$API') and 'api-version=$GAPI' in d['nextLink']"
	local next names="" n=0
	next=$(j "d['nextLink']")
	while [ -n "$next" ] && [ "$n" -lt 10 ]; do
		arm GET "$next"
		names="$names $(j "' '.join(v['name'] for v in d['value'])")"
		next=$(j "d.get('nextLink', '')")
		n=$((n + 1))
	done
	[ "$names" = " 0.3.0 1.0.0 2.0.0" ] && ok "pages 2 and 3:$names" || bad "pages 2 and 3:$names"
	control POST config '{"page_size": 100}'
	arm GET "$VER?api-version=$GAPI"
	check "len(d['value']) == 5 and 'nextLink' not in d"
	check "[v['properties']['publishingProfile']['publishedDate'][:10] for v in d['value'][:3]] == ['2026-01-01', '2026-01-02', '2026-01-03']"

	step "image version: DELETE (long-running: Azure-AsyncOperation and Location)"
	control POST config '{"polls": 2}'
	arm DELETE "$VER/0.1.0?api-version=$GAPI"
	expect 202
	check "'/capsOperations/' in h['azure-asyncoperation'] and 'monitor=true' in h['location'] and h['retry-after'] == '0' and d is None"
	local loc_url
	loc_url=$(header Location)
	arm GET "$VER/0.1.0?api-version=$GAPI"
	check "d['properties']['provisioningState'] == 'Deleting'"
	arm GET "$loc_url"
	expect 202 "Location: still running"
	check "h['location'] and 'retry-after' in h"
	arm GET "$loc_url"
	expect 200 "Location: done"
	arm GET "$VER/0.1.0?api-version=$GAPI"
	expect 404 "deleted"
	control POST config '{"polls": 1}'
	arm DELETE "$VER/0.1.0?api-version=$GAPI"
	expect 204 "DELETE of a missing version"

	step "image version: safetyProfile.blockDeletionBeforeEndOfLife"
	control POST image-versions '{"name": "3.0.0", "endOfLifeDate": "2099-12-31T00:00:00Z", "blockDeletionBeforeEndOfLife": true}'
	arm DELETE "$VER/3.0.0?api-version=$GAPI"
	expect 409 "blocked before its end of life"
	error OperationNotAllowed "2099-12-31T00:00:00Z"
	arm GET "$VER/3.0.0?api-version=$GAPI"
	check "d['properties']['provisioningState'] == 'Succeeded' and d['properties']['safetyProfile']['blockDeletionBeforeEndOfLife'] is True"
	control POST image-versions '{"name": "3.0.1", "endOfLifeDate": "2020-01-01T00:00:00Z", "blockDeletionBeforeEndOfLife": true}'
	arm DELETE "$VER/3.0.1?api-version=$GAPI"
	expect 202 "end of life passed: deletable"
	poll_done "$(header Azure-AsyncOperation)" Succeeded
	arm PATCH "$VER/3.0.0?api-version=$GAPI" '{"properties": {"safetyProfile": {"blockDeletionBeforeEndOfLife": false}, "storageProfile": {}}}'
	expect 200 "lift the block"
	poll_done "$(header Azure-AsyncOperation)" Succeeded
	arm DELETE "$VER/3.0.0?api-version=$GAPI"
	expect 202 "now deletable"
	poll_done "$(header Azure-AsyncOperation)" Succeeded

	step "failure injection: operations that fail halfway"
	control POST fail-next '{"operation": "create", "type": "galleryImageVersion", "code": "ReplicationFailed", "message": "Replication to eastus2 failed."}'
	arm PUT "$VER/4.0.0?api-version=$GAPI" "$good"
	expect 201 "the create is accepted"
	poll_done "$(header Azure-AsyncOperation)" Failed
	check "d['error'] == {'code': 'ReplicationFailed', 'message': 'Replication to eastus2 failed.'}"
	arm GET "$VER/4.0.0?api-version=$GAPI&%24expand=ReplicationStatus"
	check "d['properties']['provisioningState'] == 'Failed' and d['properties']['replicationStatus']['aggregatedState'] == 'Failed'"
	control POST fail-next '{"operation": "update"}'
	arm PATCH "$VER/2.0.0?api-version=$GAPI" '{"tags": {"a": "b"}, "properties": {"storageProfile": {}}}'
	expect 200
	poll_done "$(header Azure-AsyncOperation)" Failed
	check "d['error']['code'] == 'InternalExecutionError'"
	arm GET "$VER/2.0.0?api-version=$GAPI"
	check "d['properties']['provisioningState'] == 'Failed'"
	control POST fail-next '{"operation": "delete", "type": "galleryImageVersion"}'
	arm DELETE "$VER/4.0.0?api-version=$GAPI"
	expect 202
	loc_url=$(header Location)
	arm GET "$loc_url"
	expect 400 "Location of a failed delete answers the error"
	check "d['error']['code'] == 'InternalExecutionError'"
	arm GET "$VER/4.0.0?api-version=$GAPI"
	expect 200 "a failed delete leaves the version"
	check "d['properties']['provisioningState'] == 'Failed'"

	step "managed images (Microsoft.Compute/images, api-version $IAPI from the SDK)"
	local image="{\"location\": \"westeurope\", \"tags\": {\"kiln-build\": \"b1\"}, \"properties\": {\"storageProfile\": {\"osDisk\": {\"osType\": \"Linux\", \"osState\": \"Generalized\", \"managedDisk\": {\"id\": \"/subscriptions/$S/resourceGroups/$RG/providers/Microsoft.Compute/disks/pkr-os\"}}}, \"hyperVGeneration\": \"V2\"}}"
	arm PUT "$IMG/kiln-base-1?api-version=$IAPI" "$image"
	expect 201 "created"
	check "d['properties']['provisioningState'] == 'Creating' and '/locations/westeurope/operations/' in h['azure-asyncoperation'] and d['type'] == 'Microsoft.Compute/images'"
	poll_done "$(header Azure-AsyncOperation)" Succeeded
	arm GET "$IMG/kiln-base-1?api-version=$IAPI"
	expect 200
	check "d['properties']['provisioningState'] == 'Succeeded' and d['properties']['storageProfile']['osDisk']['osType'] == 'Linux' and d['tags'] == {'kiln-build': 'b1'}"
	arm PUT "$IMG/kiln-base-2?api-version=$IAPI" "{\"location\": \"westeurope\", \"properties\": {\"storageProfile\": {\"osDisk\": {\"osType\": \"Plan9\", \"osState\": \"Generalized\"}}}}"
	expect 400 "bad enum in an image"
	error InvalidRequestContent '"Plan9" is not an allowed value: one of Windows, Linux'
	arm PUT "$IMG/kiln-base-2?api-version=$IAPI" "{\"location\": \"westeurope\", \"properties\": {\"storageProfile\": {\"osDisk\": {\"osState\": \"Generalized\", \"blobUri\": \"https://x/y.vhd\"}}}}"
	expect 400 "osType is required"
	error InvalidRequestContent "'properties.storageProfile.osDisk.osType' is missing"
	arm PUT "$IMG/kiln-base-2?api-version=$IAPI" "{\"location\": \"westeurope\", \"sku\": \"x\", \"properties\": {\"sourceVirtualMachine\": {\"id\": \"/subscriptions/$S/resourceGroups/$RG/providers/Microsoft.Compute/virtualMachines/pkrvm\"}}}"
	expect 400 "undeclared field in an image"
	error InvalidRequestContent "'sku'"
	arm PATCH "$IMG/kiln-base-1?api-version=$IAPI" '{"tags": {"kiln-build": "b1", "kiln-keep": "true"}}'
	expect 200 "PATCH tags"
	check "d['properties']['provisioningState'] == 'Updating'"
	poll_done "$(header Azure-AsyncOperation)" Succeeded
	arm GET "$IMG/kiln-base-1?api-version=$IAPI"
	check "d['tags'] == {'kiln-build': 'b1', 'kiln-keep': 'true'} and d['properties']['provisioningState'] == 'Succeeded'"
	control POST images '{"name": "kiln-seeded", "tags": {"kiln-build": "old"}, "location": "eastus2"}'
	expect 200 "seeded"
	control POST config '{"page_size": 1}'
	arm GET "$IMG?api-version=$IAPI"
	expect 200 "list by resource group, page 1"
	check "[i['name'] for i in d['value']] == ['kiln-base-1'] and 'nextLink' in d"
	arm GET "$(j "d['nextLink']")"
	check "[i['name'] for i in d['value']] == ['kiln-seeded'] and 'nextLink' not in d"
	control POST config '{"page_size": 100}'
	arm GET "subscriptions/$S/providers/Microsoft.Compute/images?api-version=$IAPI"
	expect 200 "list by subscription"
	check "len(d['value']) == 2"
	control POST fail-next '{"operation": "delete", "type": "image"}'
	arm DELETE "$IMG/kiln-seeded?api-version=$IAPI"
	expect 202
	poll_done "$(header Azure-AsyncOperation)" Failed
	arm GET "$IMG/kiln-seeded?api-version=$IAPI"
	check "d['properties']['provisioningState'] == 'Failed'"
	arm DELETE "$IMG/kiln-base-1?api-version=$IAPI"
	expect 202 "delete"
	check "'monitor=true' in h['location']"
	poll_done "$(header Azure-AsyncOperation)" Succeeded
	arm GET "$IMG/kiln-base-1?api-version=$IAPI"
	expect 404 "deleted"
	error ResourceNotFound
	arm DELETE "$IMG/kiln-base-1?api-version=$IAPI"
	expect 204 "delete of a missing image"

	step "response validation: a malformed answer is a stand-in bug (500)"
	control POST malform '{"count": 1}'
	arm GET "$GAL?api-version=$GAPI"
	expect 500 "the stand-in's own response did not match the schema"
	check "'stand-in bug' in d['error']['message'] and 'undeclared property' in d['error']['message']"
	arm GET "$GAL?api-version=$GAPI"
	expect 200 "and the next one is fine again"

	step "control API: counts and state"
	control GET calls
	check "d['calls']['GalleryImageVersions_CreateOrUpdate'] >= 15 and d['calls']['GalleryImageVersions_Delete'] >= 6 and d['calls']['GalleryImageVersions_Update'] >= 6 and d['calls']['Images_Delete'] == 3 and d['calls']['OperationStatus_Get'] >= 10 and d['calls']['Token'] >= 10"
	control GET state
	check "d['counters']['response_validation_failures'] == 1 and d['counters']['crashes'] == 0 and d['counters']['request_validation_failures'] >= 20"
	check "d['schemas'] == '''$schemas'''"
	control GET requests?since=0
	check "len(d['requests']) > 50"
	control POST reset
	arm GET "$VER?api-version=$GAPI"
	check "d['value'] == []"

	step "Microsoft's own client: azure-mgmt-compute (sdkclient.py) against the stand-in"
	if "$py" -c 'import azure.mgmt.compute' 2>/dev/null; then
		"$py" "$here/sdkclient.py" "$info" >"$work/sdk.out" 2>&1 || true
		cat "$work/sdk.out"
		passed=$((passed + $(grep -c '^   ok: ' "$work/sdk.out" || true)))
		failed=$((failed + $(grep -c '^   FAILED: ' "$work/sdk.out" || true)))
		grep -q '^sdkclient: [0-9]* passed, 0 failed$' "$work/sdk.out" || bad "sdkclient.py did not finish cleanly"
	else
		bad "azure-mgmt-compute cannot be imported by $py (run hack/azure/setup.sh)"
	fi

	kill -TERM "$run_pid"
	wait "$run_pid" 2>/dev/null || true
	run_pid=""
	if grep -q "RESPONSE INVALID" "$log_dir/standin.log"; then
		[ "$(grep -c "RESPONSE INVALID" "$log_dir/standin.log")" = 1 ] && ok "exactly one RESPONSE INVALID in the log (the malformed one)" ||
			bad "unexpected RESPONSE INVALID lines: $(grep "RESPONSE INVALID" "$log_dir/standin.log" | head -5)"
	else
		bad "the malformed response was not logged"
	fi
	if grep -q Traceback "$log_dir/standin.log"; then bad "a Traceback in the log"; else ok "no Traceback in the log"; fi
}

for m in ${SMOKE_SCHEMAS:-auto sdk}; do
	before=$passed
	smoke_mode "$m"
	echo
	echo "[$m] $((passed - before)) checks passed"
done
smoke_done=1
echo
echo "smoke: $passed passed, $failed failed"
[ "$failed" = 0 ]
