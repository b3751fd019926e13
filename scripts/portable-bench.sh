#!/usr/bin/env bash
# Packs the benchmarks into one self-contained tarball for an x86-64 Linux host that has no network and
# none of the peers installed (a bigger machine, to see how the ratios move with the CPU count):
#   bash scripts/portable-bench.sh /tmp/kumo-bench.tar.xz     # here, after scripts/setup.sh
#   tar xJf kumo-bench.tar.xz -C DIR && DIR/kumo/run-bench.sh blk fs     # there (root, for the sandboxes)
# It holds node, the runtime node_modules plus tsx, the compiled tree, and qemu-storage-daemon, QEMU's
# virtiofsd and fio with every library they link except glibc's (the target's glibc must not be older).
set -euo pipefail
case "${1:-}" in
  -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  -*) echo "usage: portable-bench.sh OUT.tar.xz (--help: what it packs)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
out=$(realpath -m -- "${1:?usage: portable-bench.sh OUT.tar.xz}")
peers=()
for p in qemu-storage-daemon /usr/lib/qemu/virtiofsd fio; do
  found=$(command -v "$p") || { echo "portable-bench: $p not installed (run scripts/setup.sh)" >&2; exit 1; }
  peers+=("$found")
done
npm run build >/dev/null || { npm run build; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
k=$stage/kumo
mkdir -p "$k/node/bin" "$k/peers/bin" "$k/peers/lib"
cp "$(command -v node)" "$k/node/bin/"

git ls-files -z | tar cf - --null -T - | tar xf - -C "$k"
tar cf - --exclude='*.map' dist | tar xf - -C "$k"
{
  npm ls --omit=dev --all --parseable 2>/dev/null | sed "s|^$PWD/||" | grep '^node_modules/' | grep -v -e '@types/node' -e undici-types
  printf '%s\n' node_modules/tsx node_modules/esbuild node_modules/@esbuild/linux-x64
} | sort -u | tar cf - -T - | tar xf - -C "$k"

for p in "${peers[@]}"; do
  name=$(basename "$p")
  cp "$p" "$k/peers/bin/"
  ldd "$p" | awk '$3 ~ /^\// {print $3}' | grep -vE '/(libc|libm|libpthread|libdl|librt|ld-linux-x86-64)\.so' |
    xargs -r cp -L -t "$k/peers/lib/"
  # exec keeps the pid, which the benchmarks stop and read CPU time from.
  printf '#!/bin/sh\nLD_LIBRARY_PATH="$(dirname "$0")/lib" exec "$(dirname "$0")/bin/%s" "$@"\n' "$name" >"$k/peers/$name"
  chmod +x "$k/peers/$name"
done

cat >"$k/run-bench.sh" <<'EOF'
#!/usr/bin/env bash
# Runs `npm run bench` from this bundle: its own node and peers first on PATH, the compiled tree pinned.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
export PATH="$here/node/bin:$here/peers:$PATH" KUMO_DIST=1 KUMO_QEMU_VIRTIOFSD="$here/peers/virtiofsd"
exec node node_modules/tsx/dist/cli.mjs bench/run.ts "$@"
EOF
chmod +x "$k/run-bench.sh"
tar cf - -C "$stage" kumo | xz -T0 -6 >"$out"
echo "portable-bench: $out ($(du -h "$out" | cut -f1))"
