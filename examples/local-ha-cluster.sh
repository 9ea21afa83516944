#!/usr/bin/env bash
# Three managers and a worker on one machine (loopback ports, data under /tmp), a
# replicated service, and a leader failover. Needs the warren binary on PATH.
# Stop everything with: pkill -f 'warren (cluster|daemon)'
set -euo pipefail
base=${BASE:-/tmp/warren-example}
rm -rf "$base" && mkdir -p "$base"
node() { # name port
  echo "--data-dir $base/$1 --listen-addr 127.0.0.1:$2 --socket $base/$1.sock --metrics-addr 127.0.0.1:$(( $2 + 1000 )) --node-name $1"
}
w() { warren -H "unix://$base/m1.sock" "$@"; }

warren cluster init $(node m1 12001) >"$base/m1.log" 2>&1 &
until w cluster info >/dev/null 2>&1; do sleep 0.2; done
mt=$(w cluster join-token manager -q)
wt=$(w cluster join-token worker -q)
warren cluster join --token "$mt" $(node m2 12002) 127.0.0.1:12001 >"$base/m2.log" 2>&1 &
warren cluster join --token "$mt" $(node m3 12003) 127.0.0.1:12001 >"$base/m3.log" 2>&1 &
warren cluster join --token "$wt" $(node w1 12004) 127.0.0.1:12001 >"$base/w1.log" 2>&1 &
sleep 3
w node ls
w service create web --image example/web:1 --replicas 6
sleep 1
w service ps web

echo "--- killing m1 (the leader) ---"
pkill -9 -f "data-dir $base/m1 " || true
warren -H "unix://$base/m2.sock" service create after-failover --image example/web:1
warren -H "unix://$base/m2.sock" cluster info
