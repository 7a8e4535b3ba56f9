#!/usr/bin/env bash
# Installs strata: the command, the conformance runner, the storage drivers,
# an example configuration, shell completions and man pages.
#
#   scripts/install.sh [--prefix /usr/local] [--destdir DIR] [--from BUILD_DIR]
#
#   PREFIX/bin/strata, PREFIX/bin/strata-conformance
#   PREFIX/lib/strata/drivers/libstrata_driver_<name>.so   (strata finds them
#                     there, beside its own binary; the example template is
#                     not installed: it is a starting point, not a driver)
#   /etc/strata/storage.toml.example                        (never overwrites)
#   PREFIX/share/bash-completion/completions/strata, zsh and fish completions
#   PREFIX/share/man/man1/strata*.1
#
# --destdir stages everything under DIR (for packaging); --from takes the
# binaries from BUILD_DIR instead of building them in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=/usr/local destdir="" from=""
while (($#)); do
    case $1 in
        --prefix) prefix=$2; shift 2 ;;
        --destdir) destdir=$2; shift 2 ;;
        --from) from=$2; shift 2 ;;
        *) echo "install.sh: unknown argument '$1' (see the comment at the top)" >&2; exit 2 ;;
    esac
done
drivers=(vfs overlay btrfs zfs devicemapper)
if [ -z "$from" ]; then
    packages=(-p strata-cli -p strata-conformance)
    for d in "${drivers[@]}"; do packages+=(-p "strata-driver-$d"); done
    cargo build --release "${packages[@]}"
    from=target/release
fi
root=$destdir$prefix
install -d "$root/bin" "$root/lib/strata/drivers" "$root/share/man/man1" \
    "$root/share/bash-completion/completions" "$root/share/zsh/site-functions" \
    "$root/share/fish/vendor_completions.d" "$destdir/etc/strata"
install -m 0755 "$from/strata" "$from/strata-conformance" "$root/bin/"
for d in "${drivers[@]}"; do
    # Mode 0644, owned by the installer: strata refuses a library others
    # could replace.
    install -m 0644 "$from/libstrata_driver_$d.so" "$root/lib/strata/drivers/"
done
if [ ! -e "$destdir/etc/strata/storage.toml.example" ]; then
    install -m 0644 scripts/storage.toml.example "$destdir/etc/strata/storage.toml.example"
fi
"$root/bin/strata" system completions bash > "$root/share/bash-completion/completions/strata"
"$root/bin/strata" system completions zsh > "$root/share/zsh/site-functions/_strata"
"$root/bin/strata" system completions fish > "$root/share/fish/vendor_completions.d/strata.fish"
"$root/bin/strata" system man "$root/share/man/man1"
echo "installed strata into $root (drivers in $prefix/lib/strata/drivers)"
