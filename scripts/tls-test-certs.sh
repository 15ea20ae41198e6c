#!/bin/sh
# Make a throw-away x509 CA with a server and a client certificate, for the
# TLS export tests (openssl). Idempotent: run again, it keeps what it made;
# it never replaces a server folder's certificates that it did not make
# (exit status 3).
#   tls-test-certs.sh SERVER_DIR CLIENT_DIR [CA_DIR]
# SERVER_DIR gets what a TLS NBD server reads (QEMU's tls-creds-x509 layout):
#   ca-cert.pem server-cert.pem server-key.pem
# CLIENT_DIR what a client reads (libnbd's tls-certificates=DIR):
#   ca-cert.pem client-cert.pem client-key.pem
# CA_DIR (default CLIENT_DIR/..ca, i.e. a sibling) keeps the CA's key.
# Keys are 0600 and folders 0700. The server certificate names localhost,
# 127.0.0.1, ::1, this host's name and its addresses, so clients that check
# the server's name (libnbd does) accept it on any of them.
set -eu

server=$1
client=$2
ca=${3:-$client.ca}
if [ -f "$server/ca-cert.pem" ]; then
    if [ -f "$client/client-cert.pem" ] && cmp -s "$server/ca-cert.pem" "$client/ca-cert.pem"; then
        exit 0
    fi
    echo "tls-test-certs: $server holds certificates of another CA: left alone" >&2
    exit 3
fi

umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$server" "$client" "$ca"
chmod 700 "$server" "$client" "$ca"

san="DNS:localhost,IP:127.0.0.1,IP:::1"
host=$(hostname 2>/dev/null || true)
[ -n "$host" ] && san="$san,DNS:$host"
for a in $(hostname -I 2>/dev/null || true); do
    san="$san,IP:$a"
done

key() { openssl genpkey -quiet -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

key "$tmp/ca-key.pem"
openssl req -x509 -new -key "$tmp/ca-key.pem" -days 3650 -subj "/CN=libvirt-backup test CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$tmp/ca-cert.pem"

# cert NAME CN EXTENSIONS
cert() {
    key "$tmp/$1-key.pem"
    openssl req -new -key "$tmp/$1-key.pem" -subj "/CN=$2" -out "$tmp/$1.csr"
    printf '%s\n' "$3" > "$tmp/$1.ext"
    openssl x509 -req -in "$tmp/$1.csr" -CA "$tmp/ca-cert.pem" -CAkey "$tmp/ca-key.pem" \
        -CAcreateserial -days 3650 -extfile "$tmp/$1.ext" -out "$tmp/$1-cert.pem" 2>/dev/null
}
cert server localhost "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san"
cert client libvirt-backup-test-client "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"

cp "$tmp/ca-key.pem" "$ca/"
cp "$tmp/ca-cert.pem" "$ca/"
cp "$tmp/ca-cert.pem" "$tmp/server-cert.pem" "$tmp/server-key.pem" "$server/"
cp "$tmp/ca-cert.pem" "$tmp/client-cert.pem" "$tmp/client-key.pem" "$client/"
chmod 600 "$server"/*.pem "$client"/*.pem "$ca"/*.pem
echo "tls-test-certs: certificates in $server (server) and $client (client)"
