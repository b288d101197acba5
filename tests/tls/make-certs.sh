#!/bin/sh
# Regenerates the TLS test certificates in this directory with the openssl tool:
#   sh tests/tls/make-certs.sh
# FOR TESTS ONLY: their private keys are public. Valid from 2000-01-01 to 9999-12-31, so
# that no test depends on today's date (CI runs some tests with a moved clock).
#   ca.pem                     a test CA (its key is thrown away)
#   server.pem, server.key     signed by ca.pem, for localhost, 127.0.0.1 and ::1
#   other.pem, other.key       self-signed, another key, same names: a server whose
#                              certificate changed (reload, trust on first use)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
cat > ca.cnf <<'CNF'
[ca]
default_ca = test
[test]
dir = .
database = index.txt
serial = serial
new_certs_dir = .
default_md = sha256
policy = any
unique_subject = no
[any]
commonName = supplied
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF
touch index.txt
echo 01 > serial
dates="-startdate 20000101000000Z -enddate 99991231235959Z"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
sign() {  # sign NAME SUBJECT EXTENSIONS [ca options...]
    name=$1 subject=$2 ext=$3
    shift 3
    openssl req -new -key "$name.key" -subj "$subject" -out "$name.csr"
    # shellcheck disable=SC2086
    openssl ca -batch -notext -config ca.cnf -in "$name.csr" -extensions "$ext" $dates \
        -out "$name.pem" "$@" 2>/dev/null
}
key ca.key && sign ca "/CN=chatd test CA" ca_ext -selfsign -keyfile ca.key
key server.key && sign server "/CN=localhost" server_ext -cert ca.pem -keyfile ca.key
key other.key && sign other "/CN=localhost" server_ext -selfsign -keyfile other.key
cp ca.pem server.pem server.key other.pem other.key "$here/"
echo "wrote ca.pem server.pem server.key other.pem other.key to $here"
