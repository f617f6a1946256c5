# Shared by the benchmark scripts (sourced, not run): what each of them needs the same way.

# need TOOL...: stops with a message unless every TOOL is on the PATH.
need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "$tool is needed" >&2; exit 1; }
  done
}

# release_drl: sets drl to $DRL, or to the release build (target/release/drl, built if missing).
release_drl() {
  drl=${DRL:-${CARGO_TARGET_DIR:-target}/release/drl}
  [ -x "$drl" ] || cargo build --release --locked -p drl
}

# rss_kib PID: the process's resident set (VmRSS) in KiB.
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# cpu_ticks PID: the process's user + system CPU time so far, in clock ticks (getconf CLK_TCK).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# memory_config NAME LIMIT WINDOW: $out/NAME.yaml, a memory-store node whose every pair has the
# default LIMIT per WINDOW (e.g. 60000 90s).
memory_config() {
  printf 'store:\n  kind: memory\ndefault:\n  limit: %s\n  window: %s\n' "$2" "$3" > "$out/$1.yaml"
}

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

# bench_options HELP_LINES ARGS...: the options every sub-command takes: --quick (a smoke run),
# --docs / --no-docs (write docs/benchmarks.md or not; by default only a full run does), --note
# TEXT, --help (prints lines HELP_LINES, e.g. 2,13, of the script). Sets quick, docs and note;
# the options it does not know are left, in order, in the array extra.
bench_options() {
  local help=$1
  shift
  quick=0 docs="" note="" extra=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --quick) quick=1 ;;
      --docs) docs=1 ;;
      --no-docs) docs=0 ;;
      --note) note="${2:?--note takes a text}"; shift ;;
      -h|--help) sed -n "${help}p" "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
      *) extra+=("$1") ;;
    esac
    shift
  done
  [ -n "$docs" ] || docs=$((1 - quick))
}

# no_extra_options: refuses what bench_options left in extra.
no_extra_options() {
  if [ ${#extra[@]} -gt 0 ]; then
    echo "unknown option: ${extra[0]} (see --help)" >&2
    exit 2
  fi
}

# stop_server: stops the node start_drl started, if it runs: SIGTERM, then SIGKILL after 10 s.
stop_server() {
  if [ -n "${server_pid:-}" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid=""
}

# machine_facts: KEY=value lines on this machine (CPU, cores, memory, kernel, virtualization,
# compiler) for a report's machine file.
machine_facts() {
  echo "cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "cores=$(nproc)"
  echo "memory=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "kernel=$(uname -sr)"
  echo "virtualization=vm: $(systemd-detect-virt --vm 2>/dev/null || echo none), container: $(systemd-detect-virt --container 2>/dev/null || echo none)"
  echo "rustc=$(rustc --version)"
}
