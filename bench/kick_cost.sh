#!/bin/bash
# bench/kick_cost.sh OLD_VUF NEW_VUF: interleaved QD1 randread runs of two
# builds of `vuf` against one reference back-end (RAM disk), 5 rounds each,
# eventfd and busy-poll modes. Used for docs/benchmarks.md "The kick that
# cannot block".

OLD=${1:?old vuf}; NEW=${2:?new vuf}; BE=${BE:-$(dirname "$NEW")/backend/vuf-backend-blk}
d=$(mktemp -d); $BE --socket-path=$d/s --ram=64M --num-queues=1 >$d/be.log 2>&1 & bp=$!
for i in $(seq 50); do [ -S $d/s ] && break; sleep 0.1; done
echo "load before: $(cat /proc/loadavg)"
for mode in "" "--busy-poll"; do
for round in 1 2 3 4 5; do
  for v in old new; do
    exe=$OLD; [ $v = new ] && exe=$NEW
    out=$($exe blk $d/s bench --rw randread --bs 4096 --iodepth 1 --seconds 3 $mode --json 2>/dev/null)
    echo "$v ${mode:-eventfd} round $round: $(echo "$out" | jq -r '"iops \(.iops|floor) median_ns \(.latency_ns.median) p99_ns \(.latency_ns.p99)"' 2>/dev/null || echo "$out" | head -c 300)"
  done
done; done
echo "load after: $(cat /proc/loadavg)"
kill $bp; wait $bp 2>/dev/null; rm -rf $d
