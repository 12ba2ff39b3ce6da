#!/usr/bin/env bash
# Wait up to $1 s for the detached script of folder $2 (run_real.sh: /tmp/real, the default; run_speed.sh:
# /tmp/speed) to end, print its progress, and pack $2/out into $OUT.
end=$(( $(date +%s) + $1 )) dir=${2:-/tmp/real}
while kill -0 "$(cat $dir/device.pid 2>/dev/null)" 2>/dev/null && [ "$(date +%s)" -lt "$end" ]; do sleep 10; done
kill -0 "$(cat $dir/device.pid 2>/dev/null)" 2>/dev/null && echo "STILL RUNNING" || echo "DEVICE SCRIPT ENDED"
grep -h "^== " $dir/out/device.log | tail -20
tail -c 4000 $dir/out/device.log
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
f=$(find /tmp/real/repo/.dvc/tmp -type f \( -name '*.out' -o -name '*.log' \) -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -1 | cut -d' ' -f2)
[ -n "$f" ] && { echo "-- $f"; tail -c 1500 "$f"; }
cd $dir/out && tar czf "$OUT/out.tgz" --exclude='*.safetensors' --exclude='*.pt' --exclude='*.bin' . && ls -la "$OUT"
