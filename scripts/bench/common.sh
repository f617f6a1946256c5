# Shared by the benchmark scripts (sourced, not run): what each of them needs the same way.

# start_drl NAME: `$drl serve` with $out/NAME.yaml on free loopback ports, its log in
# $out/NAME.log; sets server_pid, HTTP and GRPC (host:port) once the node has logged both.
start_drl() {
  local name=$1
  RUST_LOG=info "$drl" serve --config "$out/$name.yaml" \
    --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 2> "$out/$name.log" &
  server_pid=$!
  HTTP="" GRPC=""
  for _ in $(seq 300); do
    HTTP=$(sed -n 's/.*listening on http:\/\/\([0-9.:]*\).*/\1/p' "$out/$name.log" | head -1)
    GRPC=$(sed -n 's/.*gRPC listening on \([0-9.:]*\).*/\1/p' "$out/$name.log" | head -1)
    [ -n "$HTTP" ] && [ -n "$GRPC" ] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$out/$name.log" >&2; exit 1; }
    sleep 0.1
  done
  if [ -z "$HTTP" ] || [ -z "$GRPC" ]; then
    echo "drl serve did not report its addresses:" >&2
    cat "$out/$name.log" >&2
    exit 1
  fi
  echo "$name: HTTP $HTTP, gRPC $GRPC" >&2
}
