#!/bin/sh
# One-shot setup of the docker-compose deployment (the `setup` service), safe to run again:
# the schema, the broker's config and accounts, the platform's broker secrets, the services'
# principals, and the database roles Grafana's datasources log in as.
#   /mosquitto/config     the broker's directory (shared with mosquitto and broker-sync)
#   /run/silobreak        component secrets, read by ingest and streams at start
#   /run/silobreak/grafana  the Grafana roles' passwords (mounted into Grafana)
set -eu

silobreak migrate
# Written again when it predates one listener per kind of account (docs/security.md).
if ! grep -q '^per_listener_settings true' /mosquitto/config/mosquitto.conf 2>/dev/null; then
    # Inside the compose network only; devices outside would get the TLS listener (deploy
    # profile, docs/identity.md). 1883: the platform's components; 1884: devices; 1885:
    # services, teams and the coordinator.
    silobreak broker-config --profile dev --no-dev-certs --plain-bind 0.0.0.0 \
        --device-plain-port 1884 --clients-plain-port 1885 --dir /mosquitto/config
fi

# A component's broker secret, kept in /run/silobreak/<name>.secret (made once).
component_secret() {
    file=/run/silobreak/$1.secret
    [ -s "$file" ] && return 0
    if silobreak principals list --kind component --format csv | grep -q "^$1,"; then
        out=$(silobreak principals rotate-broker-secret "$1")
    else
        out=$(silobreak principals add "$1" --kind component)
    fi
    umask 077
    printf '%s' "$(printf '%s\n' "$out" | sed -n 's/.*(shown once): //p')" > "$file"
}
component_secret ingest
component_secret streams

for service in lighting mobility environment energy water; do
    silobreak principals list --kind service --format csv | grep -q "^$service," \
        || silobreak principals add "$service" --kind service
done
# The city's coordinator: the platform board's data-flows panel reads as it.
coordinator=${SILOBREAK_GRAFANA_COORDINATOR:-data-office}
silobreak principals list --kind coordinator --format csv | grep -q "^$coordinator," \
    || silobreak principals add "$coordinator" --kind coordinator

silobreak broker-sync --dir /mosquitto/config
# The region board reads as a regional body's principal when one is named (it sees only what
# its contracts allow); until then as the coordinator, which holds none and sees nothing.
silobreak grafana roles --secrets-dir /run/silobreak/grafana --coordinator "$coordinator" \
    --region "${SILOBREAK_GRAFANA_REGION:-$coordinator}"
