# Sourced by the benchmark scripts that start one release server of their own:
#   start_release_server FLAGS...   sets $port, $pid and $data, stops the server
#                                   (by its PID) and removes $data on exit
start_release_server() {
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
  data=$(mktemp -d)
  ./target/release/jobq serve --data-dir "$data" --listen "127.0.0.1:$port" --grpc-listen off "$@" \
    >"$data/server.log" 2>&1 &
  pid=$!
  trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"' EXIT
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/health" >/dev/null && break
    sleep 0.1
  done
  echo "== jobq $(git rev-parse --short HEAD), $*, load $(cut -d' ' -f1-3 /proc/loadavg)"
}
