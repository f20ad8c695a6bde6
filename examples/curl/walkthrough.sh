#!/usr/bin/env bash
# A tour of the Sluice HTTP API with curl. Needs a gateway and a tenant key:
#   SLUICE_URL=http://127.0.0.1:8080 SLUICE_KEY=slk_... examples/curl/walkthrough.sh
# Exits non-zero if any call does not answer as described.
set -euo pipefail
url=${SLUICE_URL:?set SLUICE_URL, e.g. http://127.0.0.1:8080}
key=${SLUICE_KEY:?set SLUICE_KEY to a tenant API key}

step() { printf '\n== %s\n' "$*"; }
# call METHOD PATH [JSON] — prints the response, fails on an unexpected status.
call() {
    local method=$1 path=$2 body=${3:-} want=${WANT:-200} out status
    out=$(mktemp)
    if [[ -n $body ]]; then
        status=$(curl -sS -o "$out" -w '%{http_code}' -X "$method" -H "Authorization: Bearer $key" \
            -H 'content-type: application/json' --data "$body" "$url$path")
    else
        status=$(curl -sS -o "$out" -w '%{http_code}' -X "$method" -H "Authorization: Bearer $key" "$url$path")
    fi
    cat "$out"; echo; rm -f "$out"
    [[ $status == "$want" ]] || { echo "expected HTTP $want, got $status" >&2; exit 1; }
}

step "who am I?"
call GET /v1/tenant

step "SQL: create a table, insert with bound parameters, query it"
call POST /v1/sql '{"sql": "CREATE TABLE IF NOT EXISTS notes (id serial PRIMARY KEY, body text NOT NULL, tags text[], at timestamptz DEFAULT now())"}'
call POST /v1/sql '{"sql": "INSERT INTO notes (body, tags) VALUES ($1, $2) RETURNING id", "params": ["hello from curl", ["demo", "curl"]]}'
call POST /v1/sql '{"sql": "SELECT id, body, tags FROM notes WHERE $1 = ANY(tags) ORDER BY id DESC LIMIT 5", "params": ["curl"]}'

step "SQL batch: two statements in one serializable transaction"
call POST /v1/sql '{"statements": [
  {"sql": "INSERT INTO notes (body) VALUES ($1)", "params": ["batched"]},
  {"sql": "SELECT count(*)::int AS n FROM notes"}], "isolation": "serializable"}'

step "errors are precise: a wrong parameter type names the parameter"
WANT=400 call POST /v1/sql '{"sql": "SELECT * FROM notes WHERE id = $1", "params": ["not-a-number"]}'

step "vectors: a collection with a metadata schema"
WANT=201 call PUT /v1/collections/walkthrough '{"dimension": 3, "metric": "cosine",
  "metadata_schema": {"type": "object", "properties": {"lang": {"type": "string"}, "stars": {"type": "integer"}}}}'
call POST /v1/collections/walkthrough/points '{"points": [
  {"id": "rust",   "vector": [0.9, 0.1, 0.0], "metadata": {"lang": "rust",   "stars": 5}},
  {"id": "go",     "vector": [0.7, 0.3, 0.1], "metadata": {"lang": "go",     "stars": 4}},
  {"id": "python", "vector": [0.1, 0.9, 0.2], "metadata": {"lang": "python", "stars": 5}}]}'

step "k-NN search, then with a metadata filter"
call POST /v1/collections/walkthrough/search '{"vector": [1, 0, 0], "k": 2}'
call POST /v1/collections/walkthrough/search '{"vector": [1, 0, 0], "k": 2, "filter": {"stars": {"gte": 5}}}'

step "a point that breaks the schema is refused, naming the point and field"
WANT=422 call POST /v1/collections/walkthrough/points '{"points": [{"id": "bad", "vector": [1, 0, 0], "metadata": {"stars": "many"}}]}'

step "clean up"
WANT=204 call DELETE /v1/collections/walkthrough
call POST /v1/sql '{"sql": "DROP TABLE notes"}'
echo; echo "walkthrough: all calls answered as expected"
