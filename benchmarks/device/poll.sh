#!/usr/bin/env bash
# Wait up to $1 s for run_real.sh to end (see there), print its progress, and pack /tmp/real/out into $OUT.
end=$(( $(date +%s) + $1 ))
while kill -0 "$(cat /tmp/real/device.pid 2>/dev/null)" 2>/dev/null && [ "$(date +%s)" -lt "$end" ]; do sleep 10; done
kill -0 "$(cat /tmp/real/device.pid 2>/dev/null)" 2>/dev/null && echo "STILL RUNNING" || echo "DEVICE SCRIPT ENDED"
grep -h "^== " /tmp/real/out/device.log | tail -20
tail -c 4000 /tmp/real/out/device.log
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
f=$(find /tmp/real/repo/.dvc/tmp -type f \( -name '*.out' -o -name '*.log' \) -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -1 | cut -d' ' -f2)
[ -n "$f" ] && { echo "-- $f"; tail -c 1500 "$f"; }
cd /tmp/real/out && tar czf "$OUT/out.tgz" --exclude='*.safetensors' --exclude='*.pt' --exclude='*.bin' . && ls -la "$OUT"
