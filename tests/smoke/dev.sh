#!/usr/bin/env bash
# The README's quick start, as a newcomer runs it: `cargo run --release -- dev`, then the curl
# commands the banner prints. Ports are moved off the defaults so CI does not collide with
# anything else on the machine.
set -euo pipefail
cd "$(dirname "$0")/../.."

GW=127.0.0.1:18080 ADMIN=127.0.0.1:19090 BACKEND=18081 ISSUER=18082
log=$(mktemp)
cargo build --release --locked --bin fhirwall
target/release/fhirwall dev --listen "$GW" --admin-listen "$ADMIN" \
  --backend-port "$BACKEND" --issuer-port "$ISSUER" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT

for _ in $(seq 1 100); do
  curl -fs "http://$ADMIN/readyz" >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { cat "$log"; echo "fhirwall dev exited" >&2; exit 1; }
  sleep 0.2
done
curl -fs "http://$ADMIN/readyz" >/dev/null || { cat "$log"; echo "not ready" >&2; exit 1; }

fhir="http://$GW/fhir"
expect() { # expect STATUS DESCRIPTION CURL-ARGS...
  local want=$1 what=$2; shift 2
  local got; got=$(curl -s -o /dev/null -w '%{http_code}' "$@")
  if [ "$got" != "$want" ]; then echo "FAIL $what: want $want, got $got" >&2; cat "$log" >&2; exit 1; fi
  echo "ok   $what ($got)"
}

TOKEN=$(curl -s -d grant_type=client_credentials -d 'scope=patient/Patient.rs patient/Observation.rs' \
  -d patient=pat-1 "http://127.0.0.1:$ISSUER/token" | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
[ -n "$TOKEN" ] || { echo "no token minted" >&2; exit 1; }

expect 200 "read the patient in context"     -H "Authorization: Bearer $TOKEN" "$fhir/Patient/pat-1"
expect 200 "that patient's observations"     -H "Authorization: Bearer $TOKEN" "$fhir/Observation?patient=pat-1"
expect 403 "Condition search without scope"  -H "Authorization: Bearer $TOKEN" "$fhir/Condition?patient=pat-1"
expect 403 "another patient's record"        -H "Authorization: Bearer $TOKEN" "$fhir/Patient/pat-2"
expect 401 "a token that does not verify"    -H 'Authorization: Bearer not-a-real-token' "$fhir/Patient/pat-1"
expect 401 "no token"                        "$fhir/Patient/pat-1"
expect 200 "public SMART discovery"          "$fhir/.well-known/smart-configuration"
expect 200 "public CapabilityStatement"      "$fhir/metadata"
expect 200 "metrics"                         "http://$ADMIN/metrics"

audit=$(sed -nE 's/^ *Audit records +//p' "$log" | head -1)
sleep 0.5
lines=$(wc -l <"$audit")
[ "$lines" -ge 8 ] || { echo "FAIL audit: expected >= 8 records in $audit, got $lines" >&2; exit 1; }
if grep -qF "$TOKEN" "$audit"; then echo "FAIL audit: token found in audit file" >&2; exit 1; fi
echo "ok   $lines audit records, no token in them"
echo "dev smoke test: 10 passed, 0 failed"
