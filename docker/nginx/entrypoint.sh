#!/bin/sh
# Start covidscan's nginx front as a non-root user: render the configuration, and when no
# certificate is mounted at /etc/nginx/tls, make a self-signed one (valid for
# TLS_COMMON_NAME, localhost and 127.0.0.1) that lives as long as the container.
set -eu
# `covidscan-front -t` only checks the rendered configuration (nginx -t).

export NGINX_RUN_DIR="${NGINX_RUN_DIR:-/tmp/nginx}"
mkdir -p "$NGINX_RUN_DIR"

export TLS_CERT="${TLS_CERT:-/etc/nginx/tls/tls.crt}"
export TLS_KEY="${TLS_KEY:-/etc/nginx/tls/tls.key}"
if [ ! -r "$TLS_CERT" ] || [ ! -r "$TLS_KEY" ]; then
    name="${TLS_COMMON_NAME:-localhost}"
    export TLS_CERT="$NGINX_RUN_DIR/self-signed.crt" TLS_KEY="$NGINX_RUN_DIR/self-signed.key"
    openssl req -x509 -newkey rsa:2048 -sha256 -nodes -days 365 -subj "/CN=$name" \
        -addext "subjectAltName=DNS:$name,DNS:localhost,IP:127.0.0.1" \
        -keyout "$TLS_KEY" -out "$TLS_CERT" 2>/dev/null
    echo "covidscan front: no certificate in /etc/nginx/tls; serving a self-signed one for $name"
fi

# MAX_UPLOAD_BYTES as covidscan reads it (1048576, 512MB, 512MiB, 2G) in nginx's units.
size="${MAX_UPLOAD_BYTES:-512M}"
size="$(printf '%s' "$size" | tr -d ' ' | sed -E 's/[iI]?[bB]$//')"
export MAX_BODY_SIZE="$size"
export API_UPSTREAM="${API_UPSTREAM:-api:5000}" LISTEN_PORT="${LISTEN_PORT:-8443}"

template="${NGINX_TEMPLATE:-/etc/covidscan/nginx.conf.template}"
envsubst '${NGINX_RUN_DIR} ${TLS_CERT} ${TLS_KEY} ${MAX_BODY_SIZE} ${API_UPSTREAM} ${LISTEN_PORT}' \
    < "$template" > "$NGINX_RUN_DIR/nginx.conf"
if [ "${1:-}" = "-t" ]; then
    exec nginx -t -e stderr -p "$NGINX_RUN_DIR/" -c "$NGINX_RUN_DIR/nginx.conf"
fi
exec nginx -e stderr -p "$NGINX_RUN_DIR/" -c "$NGINX_RUN_DIR/nginx.conf" -g 'daemon off;'
