# Certificates of the local control plane, sourced by cluster.sh and node.sh (they set PKI,
# the folder of the plane's CA and certificates). Kept across restarts: a certificate is
# made only when missing.

# cert NAME CN [O] [SAN] [CA]: a client certificate, or a serving one when SAN is given,
# signed by PKI/CA (default ca).
cert() {
  local name="$1" cn="$2" org="${3:-}" san="${4:-}" ca="${5:-ca}"
  [[ -f "$PKI/$name.crt" ]] && return 0
  local subj="/CN=$cn"
  [[ -n "$org" ]] && subj="/O=$org$subj"
  local ext="$PKI/$name.ext"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [[ -n "$san" ]]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$san"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$ext"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -subj "$subj" \
    -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" \
    -CAcreateserial -days 3650 -sha256 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$ext"
}
