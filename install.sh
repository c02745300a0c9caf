#!/bin/sh
# tftpd installer: downloads the release tarball for this machine (tftpd-<version>-linux-<arch>.tar.gz,
# the one SHA256SUMS names), verifies its SHA-256 against SHA256SUMS, unpacks it in a temporary
# directory and installs the binary with a config, a data directory and the tarball's systemd unit.
#
#   curl -fsSL https://releases.tftpd.invalid/latest/install.sh | sudo sh
#   curl -fsSL https://releases.tftpd.invalid/latest/install.sh | sudo sh -s -- --version v0.1.0
#
# Everything is inside functions and `main "$@"` is the last line: a download cut short
# runs nothing. Run with --help for the options.
set -eu

DEFAULT_BASE_URL="https://releases.tftpd.invalid/latest"

say() {
  printf 'tftpd-install: %s\n' "$*" >&2
}

die() {
  printf 'tftpd-install: error: %s\n' "$*" >&2
  exit 1
}

usage() {
  cat >&2 <<'USAGE'
Usage: install.sh [OPTIONS]

Installs (or upgrades) tftpd: /usr/local/bin/tftpd, /etc/tftpd/config.json (never
overwritten), /etc/systemd/system/tftpd.service and /srv/tftp; creates the system user
tftpd; enables and starts the service when systemd is running; shows `tftpd tune`.

Options:
  --base-url URL   where SHA256SUMS and tftpd-<version>-linux-<arch>.tar.gz (the version
                   SHA256SUMS names) are downloaded from
                   (default: $TFTPD_BASE_URL, else https://releases.tftpd.invalid/latest;
                   http(s):// and file:// URLs)
  --version V      download from URL/V/ instead of URL/
  --prefix DIR     install into the tree DIR (DIR/usr/local/bin/tftpd, DIR/etc/tftpd, ...);
                   no system user, no systemd, no tuning
  --no-start       do not enable or start the service
  --uninstall      remove the binary and the systemd unit (keeps /etc/tftpd and /srv/tftp)
  --purge          with --uninstall: also remove /etc/tftpd and the user tftpd; keeps the
                   boot files in /srv/tftp
  --purge-data     with --uninstall: --purge, and also remove /srv/tftp with every file in it
  -h, --help       this help
USAGE
}

# The unit for a tarball without tftpd.service (build/compile.ts leaves it out when
# systemd/tftpd.service is missing); identical to systemd/tftpd.service (a test checks it).
unit_text() {
  cat <<'TFTPD_UNIT_END'
# tftpd: TFTP server for network boot (PXE, iPXE, UEFI).
# Installed by install.sh as /etc/systemd/system/tftpd.service.
# Local changes: `systemctl edit tftpd` (a drop-in survives upgrades; install.sh rewrites this file).
#
# Not supported, on purpose: Type=notify and socket activation (tftpd.socket). Bun has no
# sd_notify and cannot adopt a passed-in UDP file descriptor; tftpd is one binary that binds
# its own sockets (one per interface address for a wildcard listen address, see README.md).
[Unit]
Description=tftpd TFTP server for network boot
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=tftpd
Group=tftpd

# Kernel settings (socket buffers, backlog, file limits) for the config: runs with full
# privileges ("+", exempt from User= and the sandbox below, so /proc/sys is writable for it)
# and never fails the start ("-") when something cannot be applied.
ExecStartPre=-+/usr/local/bin/tftpd tune --apply --config /etc/tftpd/config.json
ExecStart=/usr/local/bin/tftpd serve --no-tune --config /etc/tftpd/config.json

# SIGHUP (systemctl reload): the config file and remap rules are read again.
ExecReload=/bin/kill -HUP $MAINPID
# SIGTERM: the server stops listening, ends its transfers and exits 0.
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec=20s
Restart=on-failure
RestartSec=2s

# Enough descriptors for the default limits.max_total_connections (50,000 transfers).
LimitNOFILE=131072

# Port 69 as an unprivileged user: this one capability and nothing else.
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE

# Sandbox.
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictSUIDSGID=yes
RemoveIPC=yes
UMask=0022
# AF_NETLINK: a wildcard listen address (0.0.0.0, ::) is expanded by enumerating the
# interfaces (getifaddrs, which asks the kernel over a netlink socket).
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
RestrictNamespaces=yes
LockPersonality=yes
RestrictRealtime=yes
# No MemoryDenyWriteExecute=: Bun's JavaScript JIT needs writable+executable memory.
SystemCallArchitectures=native
# @system-service includes memfd_create, mmap, sendfile, sendmmsg and the rest the file
# cache, bun:ffi (dlopen of libc) and the worker threads use.
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallErrorNumber=EPERM

ReadOnlyPaths=/srv/tftp
# Uploads (tftp.write "create" or "overwrite") need the root writable: in a drop-in
# (`systemctl edit tftpd`) add
#   ReadWritePaths=/srv/tftp
# ReadWritePaths=/srv/tftp

[Install]
WantedBy=multi-user.target
TFTPD_UNIT_END
}

# A minimal config: serve /srv/tftp read-only on port 69 (IPv4 and IPv6); every other key
# has its default (docs/configuration.md).
config_text() {
  cat <<'TFTPD_CONFIG_END'
{
  "tftp": {
    "root": "/srv/tftp",
    "write": "off"
  },
  "log": {
    "level": "info"
  }
}
TFTPD_CONFIG_END
}

parse_args() {
  opt_base_url="${TFTPD_BASE_URL:-$DEFAULT_BASE_URL}"
  opt_version=""
  opt_prefix=""
  opt_no_start=0
  opt_uninstall=0
  opt_purge=0
  opt_purge_data=0
  while [ "$#" -gt 0 ]; do
    case "$1" in
      --base-url) [ "$#" -ge 2 ] || die "--base-url needs a URL"; opt_base_url="$2"; shift 2 ;;
      --base-url=*) opt_base_url="${1#*=}"; shift ;;
      --version) [ "$#" -ge 2 ] || die "--version needs a version"; opt_version="$2"; shift 2 ;;
      --version=*) opt_version="${1#*=}"; shift ;;
      --prefix) [ "$#" -ge 2 ] || die "--prefix needs a directory"; opt_prefix="$2"; shift 2 ;;
      --prefix=*) opt_prefix="${1#*=}"; shift ;;
      --no-start) opt_no_start=1; shift ;;
      --uninstall) opt_uninstall=1; shift ;;
      --purge) opt_purge=1; shift ;;
      --purge-data) opt_purge=1; opt_purge_data=1; shift ;;
      -h | --help) usage; exit 0 ;;
      *) usage; die "unknown option: $1" ;;
    esac
  done
  [ -n "$opt_base_url" ] || die "--base-url is empty"
  if [ "$opt_purge_data" = 1 ] && [ "$opt_uninstall" = 0 ]; then
    die "--purge-data goes with --uninstall"
  fi
  if [ "$opt_purge" = 1 ] && [ "$opt_uninstall" = 0 ]; then
    die "--purge goes with --uninstall"
  fi
  case "$opt_version" in
    */* | *' '*) die "--version: not a version: $opt_version" ;;
  esac
  case "$opt_prefix" in
    '') ;;
    /*) opt_prefix="${opt_prefix%/}" ;;
    *) opt_prefix="$(pwd)/${opt_prefix%/}" ;;
  esac
}

detect_platform() {
  os="$(uname -s)"
  [ "$os" = Linux ] || die "tftpd runs on Linux only (this is $os)"
  machine="$(uname -m)"
  case "$machine" in
    x86_64 | amd64) arch=x64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) die "no tftpd build for this machine ($machine): x86_64 and aarch64 only" ;;
  esac
}

set_paths() {
  bin_dir="$opt_prefix/usr/local/bin"
  bin_path="$bin_dir/tftpd"
  etc_dir="$opt_prefix/etc/tftpd"
  config_path="$etc_dir/config.json"
  unit_dir="$opt_prefix/etc/systemd/system"
  unit_path="$unit_dir/tftpd.service"
  srv_dir="$opt_prefix/srv/tftp"
}

need_root() {
  if [ -z "$opt_prefix" ] && [ "$(id -u)" != 0 ]; then
    die "run as root (curl -fsSL URL | sudo sh), or install into a tree with --prefix DIR"
  fi
}

systemd_running() {
  [ -z "$opt_prefix" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

# "0.1.0 (build bdb9b28af59f)" from `tftpd version`; "unknown" when it does not run.
binary_version() {
  bv_out="$("$1" version 2>/dev/null)" || bv_out=""
  bv="$(printf '%s\n' "$bv_out" | sed -n '1s/^tftpd \([^ ]*\) (build \([^,)]*\).*/\1 (build \2)/p')"
  [ -n "$bv" ] || bv="$(printf '%s\n' "$bv_out" | sed -n '1p')"
  [ -n "$bv" ] || bv="unknown"
  printf '%s\n' "$bv"
}

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d ' ' -f 1
  else
    shasum -a 256 "$1" | cut -d ' ' -f 1
  fi
}

download() {
  say "downloading $1"
  curl -fsSL --retry 3 -o "$2" "$1" || die "download failed: $1"
}

# Downloads SHA256SUMS and the tarball it names for this arch into $work, verifies the
# checksum and unpacks the tarball; nothing is installed until this has passed. Sets
# new_bin, new_unit (empty when the tarball has no tftpd.service) and new_version.
fetch_verified() {
  command -v curl >/dev/null 2>&1 || die "needs curl: apt-get install curl (Debian) or dnf install curl (RHEL)"
  command -v sha256sum >/dev/null 2>&1 || command -v shasum >/dev/null 2>&1 ||
    die "needs sha256sum (coreutils) to verify the download"
  command -v tar >/dev/null 2>&1 || die "needs tar to unpack the download"
  url_dir="${opt_base_url%/}"
  [ -z "$opt_version" ] || url_dir="$url_dir/$opt_version"
  download "$url_dir/SHA256SUMS" "$work/SHA256SUMS"

  # "<sha256> tftpd-<version>-linux-<arch>.tar.gz" for each line naming this arch's tarball
  pattern="tftpd-<version>-linux-$arch.tar.gz"
  matches="$(awk -v tail="-linux-$arch.tar.gz" '{
      f = $2; sub(/\r$/, "", f); sub(/^\*/, "", f)
      if (index(f, "tftpd-") == 1 && length(f) > length(tail) + 6 &&
          substr(f, length(f) - length(tail) + 1) == tail) print tolower($1) " " f
    }' "$work/SHA256SUMS")" || die "could not read SHA256SUMS from $url_dir"
  nl='
'
  case "$matches" in
    '') die "SHA256SUMS from $url_dir has no line for $pattern: nothing installed" ;;
    *"$nl"*) die "SHA256SUMS from $url_dir lists more than one $pattern: nothing installed" ;;
  esac
  expected="${matches%% *}"
  tarball="${matches#* }"
  top="${tarball%.tar.gz}"
  release_version="${top#tftpd-}"
  release_version="${release_version%-linux-"$arch"}"
  case "$release_version" in
    '' | .* | *[!A-Za-z0-9._+~-]*) die "SHA256SUMS from $url_dir: not a version: $release_version (in $tarball)" ;;
  esac
  case "$expected" in
    *[!0-9a-f]*) die "SHA256SUMS from $url_dir: not a sha256 for $tarball: $expected" ;;
  esac
  [ "${#expected}" = 64 ] || die "SHA256SUMS from $url_dir: not a sha256 for $tarball: $expected"

  download "$url_dir/$tarball" "$work/$tarball"
  actual="$(sha256_of "$work/$tarball")" || die "could not compute the checksum of $tarball"
  if [ "$actual" != "$expected" ]; then
    die "checksum mismatch for $tarball (expected $expected, got $actual): nothing installed"
  fi
  say "checksum ok: $tarball sha256 $actual"

  mkdir "$work/unpack" || die "could not create $work/unpack"
  tar -xzf "$work/$tarball" -C "$work/unpack" || die "could not unpack $tarball: nothing installed"
  rm -f "$work/$tarball"
  new_bin="$work/unpack/$top/tftpd"
  if [ ! -f "$new_bin" ] || [ -h "$new_bin" ]; then
    die "$tarball holds no $top/tftpd: nothing installed"
  fi
  new_unit="$work/unpack/$top/tftpd.service"
  if [ ! -f "$new_unit" ] || [ -h "$new_unit" ]; then
    say "$tarball has no tftpd.service: the unit is the installer's own copy"
    new_unit=""
  fi
  chmod 0755 "$new_bin"
  new_version="$(binary_version "$new_bin")"
  [ "$new_version" != unknown ] || die "the tftpd in $tarball does not run on this machine: nothing installed"
}

# install_file SRC DEST MODE: copy to a temporary name next to DEST, then rename over it.
install_file() {
  if_tmp="$(dirname "$2")/.$(basename "$2").new.$$"
  if cp "$1" "$if_tmp" && chmod "$3" "$if_tmp" && mv -f "$if_tmp" "$2"; then
    return 0
  fi
  rm -f "$if_tmp"
  die "could not install $2"
}

create_user() {
  if id tftpd >/dev/null 2>&1; then
    return 0
  fi
  nologin=/usr/sbin/nologin
  [ -x "$nologin" ] || nologin=/sbin/nologin
  [ -x "$nologin" ] || nologin=/bin/false
  say "creating the system user tftpd"
  if command -v useradd >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --home-dir /nonexistent --shell "$nologin" tftpd ||
      die "useradd failed"
  elif adduser --help 2>&1 | grep -q -- '--system'; then
    adduser --system --group --no-create-home --home /nonexistent --shell "$nologin" tftpd ||
      die "adduser failed"
  elif command -v adduser >/dev/null 2>&1; then
    addgroup -S tftpd 2>/dev/null || true
    adduser -S -D -H -h /nonexistent -s "$nologin" -G tftpd tftpd || die "adduser failed"
  else
    die "cannot create the user tftpd: no useradd or adduser"
  fi
}

do_install() {
  need_root
  work="$(mktemp -d "${TMPDIR:-/tmp}/tftpd-install.XXXXXX")" || die "mktemp failed"
  trap 'rm -rf "$work"' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  fetch_verified

  old_version=""
  if [ -e "$bin_path" ]; then
    old_version="$(binary_version "$bin_path")"
  fi

  [ -n "$opt_prefix" ] || create_user
  mkdir -p "$bin_dir" "$etc_dir" "$unit_dir" "$srv_dir" || die "could not create the directories under ${opt_prefix:-/}"
  chmod 0755 "$srv_dir" "$etc_dir"

  install_file "$new_bin" "$bin_path" 0755
  say "installed $bin_path"

  if [ -e "$config_path" ]; then
    say "kept the existing $config_path"
  else
    config_text >"$work/config.json"
    install_file "$work/config.json" "$config_path" 0644
    say "wrote $config_path"
  fi

  if [ -z "$new_unit" ]; then
    new_unit="$work/tftpd.service"
    unit_text >"$new_unit"
  fi
  install_file "$new_unit" "$unit_path" 0644
  say "installed $unit_path"

  if [ -n "$opt_prefix" ]; then
    say "installed into $opt_prefix (no user, no systemd, no tuning with --prefix)"
  elif systemd_running; then
    systemctl daemon-reload || die "systemctl daemon-reload failed"
    if [ "$opt_no_start" = 1 ]; then
      say "not started (--no-start): systemctl enable --now tftpd"
    else
      systemctl enable tftpd || die "systemctl enable tftpd failed"
      systemctl restart tftpd || die "systemctl restart tftpd failed: journalctl -u tftpd"
      say "tftpd is running: systemctl status tftpd"
    fi
  else
    say "systemd is not running here: start the server with  $bin_path serve --config $config_path"
  fi

  if [ -z "$opt_prefix" ]; then
    say "kernel settings for $config_path (applied by the service at each start):"
    "$bin_path" tune --config "$config_path" >&2 || say "tftpd tune could not check the settings"
  fi

  if [ -z "$old_version" ]; then
    say "installed tftpd $new_version"
  elif [ "$old_version" = "$new_version" ]; then
    say "reinstalled tftpd $new_version (already installed)"
  elif [ "$old_version" = unknown ]; then
    say "replaced a tftpd of unknown version with $new_version"
  else
    say "upgraded from $old_version to $new_version"
  fi
}

do_uninstall() {
  need_root
  if systemd_running; then
    systemctl disable --now tftpd >/dev/null 2>&1 || true
  fi
  rm -f "$unit_path" "$bin_path" || die "could not remove $bin_path or $unit_path"
  say "removed $bin_path and $unit_path"
  if systemd_running; then
    systemctl daemon-reload || true
  fi
  if [ "$opt_purge" = 1 ]; then
    if [ -e "$etc_dir" ]; then
      rm -rf "$etc_dir" || die "could not remove $etc_dir"
      say "removed $etc_dir"
    fi
    if [ -z "$opt_prefix" ] && id tftpd >/dev/null 2>&1; then
      if command -v userdel >/dev/null 2>&1; then
        userdel tftpd || say "could not remove the user tftpd"
      else
        deluser tftpd >/dev/null 2>&1 || say "could not remove the user tftpd"
      fi
    fi
  fi
  if [ "$opt_purge_data" = 1 ]; then
    if [ -e "$srv_dir" ]; then
      n_files="$(find "$srv_dir" \( -type f -o -type l \) | wc -l | tr -d ' ')"
      rm -rf "$srv_dir" || die "could not remove $srv_dir"
      if [ "$n_files" = 1 ]; then
        say "removed $srv_dir (1 file)"
      else
        say "removed $srv_dir ($n_files files)"
      fi
    fi
  elif [ "$opt_purge" = 1 ]; then
    say "kept $srv_dir and the boot files in it (--purge-data removes them)"
  else
    say "kept $etc_dir and $srv_dir (--purge removes the config, --purge-data the boot files too)"
  fi
}

main() {
  parse_args "$@"
  set_paths
  if [ "$opt_uninstall" = 1 ]; then
    do_uninstall
  else
    detect_platform
    do_install
  fi
}

main "$@"
