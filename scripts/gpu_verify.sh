#!/usr/bin/env bash
# GPU verification on a lent GPU machine that starts bare (no cJSON, no Open MPI, no fortunes corpus, no
# network), in invocations that each fit one 600 s device call:
#   scripts/gpu_verify.sh --fetch   here, with network: downloads the .deb files of cJSON and Open MPI (with the
#                                   runtime libraries a bare image lacks) into .deps/, prepares data/fortunes/
#                                   (both git-ignored: carry them), and proves that the Open MPI unpacked from
#                                   .deps/ builds and runs an MPI program relocated, the system's Open MPI hidden
#   scripts/gpu_verify.sh test      there: unpacks .deps/ under /tmp/lpgpt-deps, checks that the carried Open
#                                   MPI runs there, builds for sm_90 (build.log, with `make detect`'s line) and
#                                   runs `make test-gpu` (test-gpu.log)
#   scripts/gpu_verify.sh bench     there: the same set-up, builds if needed, runs `make bench` (bench.log)
#   scripts/gpu_verify.sh profile   there: the same set-up, builds if needed, runs bench/profile_step.sh: the
#                                   measured time per op group against the step model (profile.log)
#   scripts/gpu_verify.sh mpi-check with .deps/ unpacked and relocated: builds and runs a 2-rank MPI program
# Logs and env.txt go to $OUT (or runs/gpu_verify/). With the device tool: carry [".deps", "data/fortunes"] and
# run `scripts/gpu_verify.sh test` in one call, `scripts/gpu_verify.sh bench` in another.
# Exit status: non-zero when a download, the build, a test or the bench failed.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mode=${1:-}
prefix=${LPGPT_DEPS_PREFIX:-/tmp/lpgpt-deps}
multiarch=x86_64-linux-gnu

# The packages: cJSON; Open MPI (binaries, wrapper compilers and headers, libraries, help and wrapper data
# files) with the runtime libraries it loads: libevent, hwloc, PMIx, and two a bare image may lack (munge for
# PMIx, udev for hwloc), used only where the machine has none of its own. Open MPI's transports for InfiniBand,
# libfabric, UCX and PSM are not carried (nor the libraries they need): one machine talks over shared memory.
cjson_debs="libcjson1 libcjson-dev"
mpi_debs="openmpi-bin libopenmpi-dev libopenmpi3 openmpi-common libpmix2 libevent-core-2.1-7 libevent-pthreads-2.1-7 libhwloc15"
fallback_debs="libmunge2 libudev1"

say() { echo "gpu_verify: $*"; }
# A program on the PATH that is a file this user may run (bash's command -v also names unrunnable ones).
runnable() { local p; p=$(command -v "$1" 2>/dev/null) && [ -f "$p" ] && [ -x "$p" ]; }
die() { echo "gpu_verify: FAIL: $*" >&2; exit 1; }

# extract_deb DEB DIR: dpkg-deb -x, or (no dpkg) the data archive of the ar file through Python.
extract_deb() {
  if command -v dpkg-deb >/dev/null; then dpkg-deb -x "$1" "$2"; return; fi
  python3 - "$1" "$2" <<'PY'
import io, sys, tarfile
deb, dest = sys.argv[1:]
data = open(deb, "rb").read()
assert data[:8] == b"!<arch>\n", f"{deb}: not a .deb"
at = 8
while at < len(data):
    name, size = data[at:at + 16].decode().strip().rstrip("/"), int(data[at + 48:at + 58])
    body = data[at + 60:at + 60 + size]
    if name.startswith("data.tar"):
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
            kwargs = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
            tar.extractall(dest, **kwargs)
        sys.exit(0)
    at += 60 + size + (size & 1)
sys.exit(f"{deb}: no data.tar member")
PY
}

# ---- Open MPI relocated: everything it needs from the environment, for any prefix it was unpacked under ----
# setup_mpi ROOT: puts the Open MPI unpacked under ROOT (ROOT/usr, from .deps/) first on the PATH and its
# libraries first on LD_LIBRARY_PATH. Open MPI finds its components, help files and wrapper data
# (share/openmpi/mpicc-wrapper-data.txt: includedir=${includedir}, libdir=${libdir}) under OPAL_PREFIX; PMIx,
# built with absolute paths, through its PMIX_* directory variables. plm=isolated starts the ranks of one
# machine without ssh (a bare image has none), and the single-copy mechanism of shared memory is off (CMA needs
# ptrace rights that VMs and containers often lack).
setup_mpi() {
  local usr=$1/usr lib=$1/usr/lib/$multiarch
  local pmix=$lib/pmix2
  [ -x "$usr/bin/orterun" ] || { say "no Open MPI under $1 (carry .deps/ from scripts/gpu_verify.sh --fetch)"; return 1; }
  ln -sfn mpicc.openmpi "$usr/bin/mpicc"
  ln -sfn mpirun.openmpi "$usr/bin/mpirun"
  ln -sfn mpiexec.openmpi "$usr/bin/mpiexec"
  # Components whose libraries are not carried (they would only print load errors).
  rm -f "$lib"/openmpi/lib/openmpi3/mca_{btl_openib,btl_ofi,btl_uct,mtl_ofi,mtl_psm,mtl_psm2,pml_ucx,osc_ucx}.so \
        "$lib"/openmpi/lib/openmpi3/mca_{atomic_ucx,spml_ucx,sshmem_ucx,reachable_netlink}.so
  # munge and udev from .deps/ only where the machine has no library of that name.
  local fallback=$1/fallback-lib so have path
  mkdir -p "$fallback"
  have=$(ldconfig -p 2>/dev/null || true)
  for so in "$1"/fallback/usr/lib/$multiarch/lib*.so.* "$1"/fallback/lib/$multiarch/lib*.so.*; do
    [ -e "$so" ] || continue
    # The machine's own copy counts only if ldconfig knows it and the file is there and not empty.
    path=$(grep "^[[:space:]]*$(basename "$so") (.*x86-64" <<<"$have" | head -n 1 | sed 's/.*=> //')
    [ -n "$path" ] && [ -s "$path" ] || ln -sfn "$so" "$fallback/$(basename "$so")"
  done
  export OPAL_PREFIX=$usr
  export PMIX_PREFIX=$pmix PMIX_EXEC_PREFIX=$pmix PMIX_LIBDIR=$pmix/lib PMIX_PKGLIBDIR=$pmix/lib/pmix
  export PMIX_DATADIR=$pmix/share PMIX_PKGDATADIR=$pmix/share/pmix
  export PATH=$usr/bin:$PATH
  export LD_LIBRARY_PATH=$lib:$lib/openmpi/lib:$pmix/lib:$fallback${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  # Debian's /etc/openmpi/openmpi-mca-params.conf, which a relocated Open MPI does not read, and the above.
  export OMPI_MCA_btl_base_warn_component_unused=0 OMPI_MCA_mtl='^ofi,psm,psm2' OMPI_MCA_btl='^uct,openib,ofi'
  export OMPI_MCA_pml='^ucx' OMPI_MCA_osc='^ucx,pt2pt' OMPI_MCA_plm=isolated OMPI_MCA_btl_vader_single_copy_mechanism=none
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
}

# mpi_check EXPECTED_PREFIX: the mpicc and mpirun on the PATH build and run a 2-rank program (an allreduce)
# whose libmpi is loaded from under EXPECTED_PREFIX; prints what it saw. Status 0 only if all of that held.
mpi_check() {
  local want=$1 dir status=0
  dir=$(mktemp -d)
  cat >"$dir/hello.c" <<'C'
#include <mpi.h>
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size, sum = -1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    char line[4096], lib[4096] = "(not mapped)";
    FILE *maps = fopen("/proc/self/maps", "r");
    while (maps && fgets(line, sizeof line, maps)) {
        char *path = strchr(line, '/');
        if (path && strstr(path, "/libmpi.so")) { path[strcspn(path, "\n")] = 0; snprintf(lib, sizeof lib, "%s", path); break; }
    }
    if (maps) fclose(maps);
    printf("rank %d of %d: allreduce %s, libmpi %s\n", rank, size, sum == size * (size - 1) / 2 ? "ok" : "WRONG", lib);
    MPI_Finalize();
    return 0;
}
C
  echo "which mpicc: $(command -v mpicc || echo none); which mpirun: $(command -v mpirun || echo none)"
  echo "mpicc --showme: $(mpicc --showme 2>&1)"
  if ! mpicc -o "$dir/hello" "$dir/hello.c" >"$dir/cc.out" 2>&1; then
    echo "mpicc failed: $(tail -n 5 "$dir/cc.out")"; status=1
  elif ! timeout 60 mpirun --allow-run-as-root --oversubscribe -np 2 "$dir/hello" >"$dir/run.out" 2>&1; then
    echo "mpirun -np 2 failed:"; tail -n 15 "$dir/run.out"; status=1
  else
    cat "$dir/run.out"
    [ "$(grep -cF "allreduce ok, libmpi $want/" "$dir/run.out")" = 2 ] ||
      { echo "expected 2 ranks with allreduce ok and libmpi under $want"; status=1; }
    grep -q "rank 0 of 2" "$dir/run.out" && grep -q "rank 1 of 2" "$dir/run.out" || status=1
    mpicc --showme:compile | grep -q -- "-I$want/" && mpicc --showme:link | grep -q -- "-L$want/" ||
      { echo "mpicc --showme does not name $want"; status=1; }
  fi
  rm -rf "$dir"
  return $status
}

# Why carried binaries may not run here: the newest glibc symbol version they need vs this machine's glibc.
glibc_note() {
  local need
  need=$(find "$1" -type f -name '*.so*' -print0 2>/dev/null | xargs -0 -r readelf -V --wide 2>/dev/null |
    grep -o 'GLIBC_2\.[0-9]*' | sort -t. -k2 -n -u | tail -n 1)
  echo "the carried libraries need up to ${need:-an unknown GLIBC version} (Debian 12 packages); this machine has $(
    getconf GNU_LIBC_VERSION 2>/dev/null || ldd --version 2>&1 | head -n 1) ($(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME"))"
}

unpack_deps() {
  local deb
  mkdir -p "$prefix"
  for deb in .deps/*.deb; do
    case "$(basename "$deb")" in
      libmunge2_*|libudev1_*) extract_deb "$deb" "$prefix/fallback" ;;
      *) extract_deb "$deb" "$prefix" ;;
    esac || die "cannot unpack $deb"
  done
}

# ---- --fetch: here, with network ----
if [ "$mode" = --fetch ]; then
  set -e
  mkdir -p .deps
  rm -f .deps/*.deb
  # shellcheck disable=SC2086
  (cd .deps && apt-get download $cjson_debs $mpi_debs $fallback_debs) ||
    die "apt-get download failed (run apt-get update first?)"
  [ -f data/fortunes/tokenizer.bin ] || python3 scripts/prepare_data.py
  # The proof: unpack to a fresh prefix and, with the system's Open MPI hidden (a mount namespace where each of
  # its files is covered, where unshare works), build and run an MPI program with the carried mpicc and mpirun.
  prefix=/tmp/ompi-test
  rm -rf "$prefix"
  unpack_deps
  set +e
  hide=""
  if unshare -m true 2>/dev/null; then
    hide=$(for pkg in openmpi-bin libopenmpi3 libopenmpi-dev openmpi-common libpmix2 libhwloc15 libevent-core-2.1-7 \
      libevent-pthreads-2.1-7 libmunge2 libudev1 openssh-client; do dpkg -L "$pkg" 2>/dev/null; done |
      while read -r f; do [ -f "$f" ] && [ ! -L "$f" ] && case $f in /usr/lib/*|/usr/bin/*|/lib/*|/etc/openmpi/*) echo "$f";; esac; done)
  fi
  if [ -n "$hide" ]; then
    say "relocation check: $(wc -l <<<"$hide") files of the system's Open MPI, PMIx, hwloc, libevent, munge and ssh hidden"
    printf '%s\n' "$hide" >/tmp/ompi-test.hidden
    unshare -m bash -c '
      while read -r f; do mount --bind /dev/null "$f" || exit 1; done < /tmp/ompi-test.hidden
      exec bash "$0" mpi-check-prefix "$1"' "$root/scripts/gpu_verify.sh" "$prefix"
  else
    say "relocation check without hiding the system's Open MPI (no dpkg database or no unshare here): the loaded libmpi's path is still checked"
    bash "$root/scripts/gpu_verify.sh" mpi-check-prefix "$prefix"
  fi
  check=$?
  rm -f /tmp/ompi-test.hidden
  echo "carried: $(du -sh .deps | cut -f1) .deps/, $(du -sh data/fortunes | cut -f1) data/fortunes/ ($(du -cb .deps data/fortunes | tail -n 1 | cut -f1) bytes)"
  ((check == 0)) || die "the relocated Open MPI did not build and run an MPI program"
  say "ok: Open MPI from .deps/ runs relocated under $prefix"
  exit 0
fi

# mpi-check-prefix DIR: set up the Open MPI unpacked under DIR and check it (used by --fetch, inside the
# namespace that hides the system's). mpi-check: the same for the prefix that test and bench unpack to.
if [ "$mode" = mpi-check-prefix ] || [ "$mode" = mpi-check ]; then
  dir=${2:-$prefix}
  [ "$mode" = mpi-check ] && { ls .deps/*.deb >/dev/null 2>&1 || die "no .deps/*.deb"; unpack_deps; }
  setup_mpi "$dir" || exit 1
  mpi_check "$dir/usr" && exit 0
  echo "$(glibc_note "$dir")"
  exit 1
fi

[ "$mode" = test ] || [ "$mode" = bench ] || [ "$mode" = profile ] || {
  echo "usage: scripts/gpu_verify.sh --fetch | test | bench | profile | mpi-check" >&2
  exit 2
}

# ---- test / bench / profile: on the GPU machine ----
out=${OUT:-runs/gpu_verify}
mkdir -p "$out"
start=$SECONDS
make_vars=(CUDA_ARCH='-gencode arch=compute_90,code=sm_90')

# cJSON and Open MPI from .deps/ where the machine has none.
if ls .deps/*.deb >/dev/null 2>&1; then unpack_deps; fi
if ! [ -f /usr/include/cjson/cJSON.h ]; then
  [ -f "$prefix/usr/include/cjson/cJSON.h" ] ||
    die "no cJSON here and none unpacked from .deps/: run scripts/gpu_verify.sh --fetch where there is network and carry .deps/"
  export CJSON_PREFIX=$prefix
  export LD_LIBRARY_PATH=$prefix/usr/lib/$multiarch${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
mpi_status="system Open MPI ($(command -v mpirun))"
# LPGPT_CARRIED_MPI=1: the carried one even where the machine has its own.
if [ -n "${LPGPT_CARRIED_MPI:-}" ] || ! runnable mpicc || ! runnable mpirun; then
  saved_path=$PATH saved_ld=${LD_LIBRARY_PATH:-}
  if setup_mpi "$prefix" >"$out/mpi-check.log" 2>&1 && mpi_check "$prefix/usr" >>"$out/mpi-check.log" 2>&1; then
    mpi_status="carried Open MPI from .deps/, relocated under $prefix (mpi-check.log)"
  else
    # Off the PATH again: the build goes on without MPI, and test-gpu's mpirun check fails, saying so.
    glibc_note "$prefix" >>"$out/mpi-check.log"
    export PATH=$saved_path LD_LIBRARY_PATH=$saved_ld
    mpi_status="NONE: the carried Open MPI does not run here (see mpi-check.log): $(tail -n 1 "$out/mpi-check.log")"
    say "WARNING: $mpi_status"
  fi
fi

# NCCL: the Makefile looks for $(CUDA_HOME)/include/nccl.h or /usr/include/nccl.h. Else the pip package
# nvidia-nccl-cu13 (PyTorch's) has include/nccl.h and lib/libnccl.so.2 (no libnccl.so to link against): a
# directory of links gives both, and NCCL_HOME names it for the Makefile.
nvcc_path=$(command -v nvcc || true)
cuda_home=${CUDA_HOME:-${nvcc_path%/bin/nvcc}}
nccl_status="none found (single-GPU build: the mpirun check will fail)"
if [ -f "$cuda_home/include/nccl.h" ] || [ -f /usr/include/nccl.h ]; then
  nccl_status="found by the Makefile ($( [ -f "$cuda_home/include/nccl.h" ] && echo "$cuda_home/include" || echo /usr/include)/nccl.h)"
else
  nccl_dir=$(python3 -c 'import nvidia.nccl as m; print(list(m.__path__)[0])' 2>/dev/null || true)
  if ! [ -f "$nccl_dir/include/nccl.h" ]; then
    nccl_dir=$(ls -d /opt/*/.venv/lib/python3*/site-packages/nvidia/nccl /usr/local/lib/python3*/dist-packages/nvidia/nccl \
      /usr/lib/python3/dist-packages/nvidia/nccl /usr/local/lib/python3*/site-packages/nvidia/nccl 2>/dev/null | head -n 1)
  fi
  nccl_lib=$(ls "$nccl_dir"/lib/libnccl.so* 2>/dev/null | head -n 1)
  if [ -f "$nccl_dir/include/nccl.h" ] && [ -n "$nccl_lib" ]; then
    mkdir -p /tmp/lpgpt-nccl/lib
    ln -sfn "$nccl_dir/include" /tmp/lpgpt-nccl/include
    ln -sfn "$nccl_lib" /tmp/lpgpt-nccl/lib/libnccl.so
    ln -sfn "$nccl_lib" /tmp/lpgpt-nccl/lib/libnccl.so.2
    export NCCL_HOME=/tmp/lpgpt-nccl
    export LD_LIBRARY_PATH=$NCCL_HOME/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    make_vars+=(NCCL_HOME=$NCCL_HOME)
    nccl_status="pip package at $nccl_dir (NCCL_HOME=$NCCL_HOME)"
  fi
fi

{
  date -u +%Y-%m-%dT%H:%MZ
  git rev-parse HEAD 2>/dev/null || echo "commit unknown"
  git status --short 2>/dev/null | head -n 20
  nvidia-smi -L 2>&1
  echo "nvcc: ${nvcc_path:-none} ($(nvcc --version 2>/dev/null | tail -n 1))"
  echo "os: $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME"), $(getconf GNU_LIBC_VERSION 2>/dev/null), $(nproc) cores"
  echo "mpi: $mpi_status"
  echo "nccl: $nccl_status"
  echo "make variables: ${make_vars[*]}"
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

# The build: all of it in build.log; the `make detect` line, and on failure the end of the log, here. make
# does not see a change of what was detected (MPI or NCCL found now, not before): then build from scratch.
build_start=$SECONDS
detected=$(make "${make_vars[@]}" --no-print-directory detect 2>&1; echo "make variables: ${make_vars[*]}")
if [ "$(cat build/gpu_verify.detected 2>/dev/null)" != "$detected" ]; then
  [ -e build ] || [ -e train_gpt ] && say "not built by this script with this configuration before: building from scratch"
  make clean >/dev/null
fi
make "${make_vars[@]}" -j"$(nproc)" all >"$out/build.log" 2>&1
build_status=$?
grep '^lpgpt build:' "$out/build.log" || echo "(no 'lpgpt build:' line from make detect)"
if ((build_status)); then
  tail -n 40 "$out/build.log"
  die "the build failed (exit $build_status; $out/build.log)"
fi
mkdir -p build && printf '%s\n' "$detected" >build/gpu_verify.detected
say "built in $((SECONDS - build_start)) s"
[ -f data/fortunes/tokenizer.bin ] && export LPGPT_TEST_DATA=${LPGPT_TEST_DATA:-$PWD/data/fortunes}

status=0
if [ "$mode" = test ]; then
  make "${make_vars[@]}" -j"$(nproc)" test-gpu 2>&1 | tee "$out/test-gpu.log"
  status=${PIPESTATUS[0]}
elif [ "$mode" = profile ]; then
  bench/profile_step.sh 2>&1 | tee "$out/profile.log"
  status=${PIPESTATUS[0]}
else
  # The bench starts no policy after ~520 s of this call (the device call's limit is 600 s).
  export BENCH_BUDGET_S=${BENCH_BUDGET_S:-$(( 520 - (SECONDS - start) > 60 ? 520 - (SECONDS - start) : 60 ))}
  DEVICE=cuda make "${make_vars[@]}" bench 2>&1 | tee "$out/bench.log"
  status=${PIPESTATUS[0]}
fi
say "$mode: exit $status after $((SECONDS - start)) s"
exit "$status"
