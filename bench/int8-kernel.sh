#!/usr/bin/env bash
# Which int8 GEMM kernel ONNX Runtime runs the trunk on, and what the other one would cost.
#   bash bench/int8-kernel.sh [TRUNK_DIR] [ROUNDS] > docs/bench/int8-kernel.txt
# On a CPU with AMX-INT8, MLAS asks Linux for the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM) and
# runs its u8s8 GEMMs on tiles (tileloadd/tdpbusd); when that request fails it falls back to AVX-512
# VNNI. A preloaded shim that refuses the request gives the fallback, so both run in one process
# image, one thread (bench/forward.py), interleaved. perf then says what share of the samples sit in
# AMX code (samples within 48 bytes of a tile instruction). Needs gcc, perf and objdump.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
TRUNK=${1:-$(ls -d models/trunks/minilm-l6-kd19-int8-*)}
ROUNDS=${2:-3}
cat >"$TMP/noamx.c" <<'C'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <sys/syscall.h>
long syscall(long number, ...) { /* refuses ARCH_REQ_XCOMP_PERM (0x1023), passes the rest on */
  va_list ap; va_start(ap, number);
  long a[6]; for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
  va_end(ap);
  if (number == SYS_arch_prctl && a[0] == 0x1023) { errno = EPERM; return -1; }
  static long (*real)(long, ...);
  if (!real) real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
  return real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}
C
gcc -O2 -shared -fPIC -o "$TMP/noamx.so" "$TMP/noamx.c" -ldl
ORT_SO=$(.venv/bin/python -c 'import glob, onnxruntime, os; print(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "onnxruntime_pybind11_state*.so"))[0])')
echo "# $(date -u +%FT%TZ) $TRUNK, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)," \
  "AMX-INT8: $(grep -qw amx_int8 /proc/cpuinfo && echo yes || echo no)"
echo "# per title, one thread, 256 test titles (bench/forward.py --rounds 1), $ROUNDS interleaved pairs"
for r in $(seq 1 "$ROUNDS"); do
  printf 'round %s amx  ' "$r"; .venv/bin/python bench/forward.py "$TRUNK" --rounds 1 | tail -1
  printf 'round %s vnni ' "$r"; LD_PRELOAD="$TMP/noamx.so" .venv/bin/python bench/forward.py "$TRUNK" --rounds 1 | tail -1
done
for v in amx vnni; do
  pre=; [ "$v" = vnni ] && pre="$TMP/noamx.so"
  LD_PRELOAD=$pre perf record -q -F 2000 -o "$TMP/$v.data" .venv/bin/python bench/forward.py "$TRUNK" --rounds 1 >/dev/null 2>&1
  printf 'perf %s: ' "$v"
  .venv/bin/python - "$ORT_SO" "$TMP/$v.data" <<'PY'
import re, subprocess, sys
so, data = sys.argv[1:]
report = subprocess.run(["perf", "report", "-i", data, "--sort", "dso,sym", "--stdio"], capture_output=True, text=True).stdout
ort = amx = 0.0
for line in report.splitlines():
    p = line.split()
    if line.startswith("#") or len(p) < 3 or "onnxruntime" not in p[1]:
        continue
    share = float(p[0].rstrip("%"))
    ort += share
    try:
        addr = int(p[-1], 16)
    except ValueError:  # a named symbol (PLT stubs): not the GEMM
        continue
    code = subprocess.run(["objdump", "-d", f"--start-address={addr - 48:#x}", f"--stop-address={addr + 48:#x}", so], capture_output=True, text=True).stdout
    amx += share * bool(re.search(r"tdpbusd|tileloadd|tilestored", code))
print(f"onnxruntime {ort:.1f} % of all samples, {amx:.1f} % within 48 bytes of an AMX tile instruction")
PY
done
