#!/usr/bin/env bash
# Run here, on a Debian machine with apt and PyPI, before a GPU check: puts into .gpu_carry/
# (git-ignored) what scripts/test_gpu.sh needs on the GPU machine and that machine's image lacks
# (it has CUDA, CMake, ninja, a compiler and a CUDA torch, but no apt, no network, no simdjson, no
# GoogleTest, perhaps no pytest, numpy or safetensors):
#   .gpu_carry/root/    simdjson and GoogleTest, Debian packages unpacked with dpkg -x
#   .gpu_carry/wheels/  the Python packages of the check (test_gpu.sh installs those missing)
# then prints the command to run there and what to carry. See docs/dev/gpu_check.md.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.gpu_carry
LIMIT_MIB=64  # what travels: the working tree plus the carried folders
# The GPU image's Python (wheels must match it) and the versions the suite is tested with here.
GPU_PYTHON=${GPU_PYTHON:-3.12}
version() { python3 -c "import importlib.metadata as m; print(m.version('$1'))"; }
WHEELS=(safetensors pytest pluggy iniconfig packaging pygments numpy)

rm -rf "$CARRY"
mkdir -p "$CARRY/root" "$CARRY/wheels"

# simdjson's runtime package is named after its soname (libsimdjson14 on bookworm).
runtime_package() { apt-cache depends libsimdjson-dev 2>/dev/null | sed -n 's/^ *Depends: \(libsimdjson[0-9]\+\)$/\1/p'; }
if [ -z "$(runtime_package)" ]; then
  echo "== apt-cache knows no libsimdjson-dev: apt-get update"
  apt-get update -qq
fi
simdjson_runtime=$(runtime_package)
[ -n "$simdjson_runtime" ] || { echo "prepare_gpu_check.sh: no libsimdjson-dev in apt" >&2; exit 1; }
DEBS=(libsimdjson-dev "$simdjson_runtime" libgtest-dev)
echo "== apt-get download ${DEBS[*]}"
debs=$(mktemp -d)
chmod 755 "$debs"  # apt's unprivileged downloader writes there
(cd "$debs" && apt-get download -qq -o APT::Sandbox::User=root "${DEBS[@]}")
for deb in "$debs"/*.deb; do dpkg -x "$deb" "$CARRY/root"; done
(cd "$debs" && ls -- *.deb) >"$CARRY/debs.txt"
rm -rf "$debs" "$CARRY/root/usr/share" "$CARRY/root/usr/src"
# Links travel as links: replace each by the file it points to (the library's soname links).
find "$CARRY/root" -type l | while read -r link; do
  target=$(readlink -f "$link") || { echo "prepare_gpu_check.sh: dangling $link" >&2; exit 1; }
  rm "$link" && cp "$target" "$link"
done

specs=()
for name in "${WHEELS[@]}"; do specs+=("$name==$(version "$name")"); done
echo "== pip download (Python $GPU_PYTHON, manylinux x86_64) ${specs[*]}"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" \
  --implementation cp "${platforms[@]}" -d "$CARRY/wheels" "${specs[@]}"

# The working tree may travel without .git: the summary's commit stamp comes from here then.
{ echo "commit $(git rev-parse --short=12 HEAD)"
  echo "dirty $(git status --porcelain --untracked-files=no | grep -q . && echo 1 || echo 0)"
} >"$CARRY/source.txt"

# What travels: tracked and untracked-not-ignored files, plus the carried folder.
tree_bytes=$(git ls-files -z --cached --others --exclude-standard |
  xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
carry_bytes=$(du -sb "$CARRY" | cut -f1)
total_mib=$(( (tree_bytes + carry_bytes) / 1048576 ))
git check-ignore -q "$CARRY" || { echo "prepare_gpu_check.sh: $CARRY is not git-ignored" >&2; exit 1; }
echo "== $CARRY: $(( carry_bytes / 1024 )) KiB (debs: $(tr '\n' ' ' <"$CARRY/debs.txt")); working" \
  "tree: $(( tree_bytes / 1024 )) KiB; together $total_mib MiB of the $LIMIT_MIB MiB that may travel"
if [ "$total_mib" -ge "$LIMIT_MIB" ]; then
  echo "prepare_gpu_check.sh: more than $LIMIT_MIB MiB would travel" >&2
  exit 1
fi
cat <<EOF
== on the GPU machine, from the repository root (device tool: run), carrying $CARRY:
   command:   bash scripts/test_gpu.sh
   carry:     ["$CARRY"]
   timeout_s: 540
   The summary lands in \$OUT (./gpu_out when unset): gpu_check.json, gpu_check.md, gpu_check.log.
EOF
