#!/bin/sh
# Side-by-side benchmark against tftpd-hpa, atftpd, dnsmasq: see build/bench-peers.ts --help.
here=$(dirname "$0"); exec "$here/../node_modules/.bin/bun" "$here/bench-peers.ts" "$@"
