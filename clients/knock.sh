#!/bin/sh
# knock.sh: knock an spa server from any POSIX shell with openssl and the
# stock tools: `ping -p` (ICMP) or `nslookup`/`dig` (DNS).
#
# Token layouts: docs/protocol.md; usage: docs/clients-shell.md.
#
# Portability rules this file keeps (dash, bash --posix, busybox ash, macOS
# and BSD sh; GNU, BSD and busybox userlands; OpenSSL 1.1/3 and LibreSSL):
# - binary data never sits in a shell variable: everything is hex, turned
#   into bytes only on a pipe (printf '%b' with \0ooo escapes) and read back
#   with od;
# - awk is POSIX awk (no bitwise functions, no gawk extensions);
# - secrets never appear on a command line (other users can read those with
#   ps): they reach awk and openssl on stdin. HMAC is built from plain
#   SHA-256 (RFC 2104) for that reason, since `openssl dgst -mac HMAC` takes
#   its key only as an argument. Only the server-wide obfuscation key is
#   passed as an argument (`openssl enc -K`): every client of the server
#   holds it and it authenticates nothing (docs/protocol.md, Keys);
# - the key file is data: read with sed, never sourced or eval'ed.

set -u
umask 077

PROG=knock.sh
NL='
'

usage() {
    cat <<'EOF'
usage: knock.sh [-k KEYFILE] [-v dns|icmp] [-i ADDRESS] [-o tcp/22] [-s DNS_SERVER]
                [-t UNIXTIME] [-n] [HOST]

  -k KEYFILE   client key file (default: $SPA_KEY, else the only
               ~/.config/spa/*.spakey)
  -v icmp      (default) ping HOST with a token in the pattern (ping -p)
  -v dns       look up a token name in the key's zone: with -s, asking the
               spa server itself; without, through the system resolver
  -i ADDRESS   the address the server should open: your public address if
               you are behind NAT (default: the local address that reaches
               the server; required for DNS through a resolver).
               -i none: an unbound token (the key's policy must allow it)
  -o PROTO/PORT  which of the key's ports to open (default: its default_open)
  -s SERVER    DNS server to ask directly (the spa server's address)
  -t UNIXTIME  token time instead of now (tests)
  -n           print the command instead of running it
  HOST         the server to ping (default: the key's server)

Exit status: 0 once ping, nslookup or dig ran, whatever they printed (the
server answers every knock alike, or not at all: a reply proves nothing),
1 if no knock could be built, 2 for a usage error.
EOF
}

die() {
    printf '%s: %s\n' "$PROG" "$*" >&2
    exit 1
}

note() {
    printf '%s: %s\n' "$PROG" "$*" >&2
}

have() {
    command -v "$1" >/dev/null 2>&1
}

# ---------------------------------------------------------------- hex tools
# Every helper reads its hex on stdin and writes lowercase hex (or bytes for
# hex_bin) on stdout, so secrets stay out of argument lists.

# Bytes on stdin -> lowercase hex.
bin_hex() {
    od -An -tx1 -v | tr -d ' \t\n' | tr 'ABCDEF' 'abcdef'
}

# Hex on stdin -> the bytes. printf %b with \0ooo escapes is POSIX and writes
# NUL bytes too (dash, bash, busybox, zsh and the BSDs all agree).
hex_bin() {
    printf '%b' "$(awk '
        BEGIN { digits = "0123456789abcdef" }
        {
            line = tolower($0)
            for (i = 1; i < length(line); i += 2) {
                v = (index(digits, substr(line, i, 1)) - 1) * 16 + index(digits, substr(line, i + 1, 1)) - 1
                printf "\\0%03o", v
            }
        }')"
}

# "A B" on stdin (equal-length hex) -> A xor B.
hex_xor() {
    awk '
        function xor8(a, b,    r, p, k) {
            r = 0; p = 1
            for (k = 0; k < 8; k++) {
                if (a % 2 != b % 2) r += p
                a = int(a / 2); b = int(b / 2); p *= 2
            }
            return r
        }
        function byte(s, i) {
            return (index(digits, substr(s, i, 1)) - 1) * 16 + index(digits, substr(s, i + 1, 1)) - 1
        }
        BEGIN { digits = "0123456789abcdef" }
        {
            out = ""
            for (i = 1; i < length($1); i += 2) out = out sprintf("%02x", xor8(byte($1, i), byte($2, i)))
            print out
        }'
}

# Hex on stdin -> lowercase unpadded base32 (RFC 4648 alphabet); coreutils'
# base32 is not on macOS or the BSDs.
hex_base32() {
    awk '
        BEGIN { digits = "0123456789abcdef"; alphabet = "abcdefghijklmnopqrstuvwxyz234567" }
        {
            line = tolower($0); bits = ""
            for (i = 1; i <= length(line); i++) {
                v = index(digits, substr(line, i, 1)) - 1
                bits = bits (int(v / 8) % 2) (int(v / 4) % 2) (int(v / 2) % 2) (v % 2)
            }
            while (length(bits) % 5) bits = bits "0"
            out = ""
            for (i = 1; i <= length(bits); i += 5) {
                v = 0
                for (j = 0; j < 5; j++) v = v * 2 + substr(bits, i + j, 1)
                out = out substr(alphabet, v + 1, 1)
            }
            print out
        }'
}

# An IPv4 or IPv6 address -> its packed bytes in hex; nothing if invalid, and
# nothing for an IPv4-mapped one (::ffff:a.b.c.d): servers refuse those, an
# IPv4 host is named by its IPv4 address.
addr_hex() {
    printf '%s\n' "$1" | awk '
        function v4(s,    n, p, i, out) {
            n = split(s, p, "[.]")
            if (n != 4) return ""
            out = ""
            for (i = 1; i <= 4; i++) {
                if (p[i] !~ /^[0-9]+$/ || length(p[i]) > 3 || p[i] + 0 > 255 || p[i] ~ /^0./) return ""
                out = out sprintf("%02x", p[i] + 0)
            }
            return out
        }
        function group(s) {
            if (s !~ /^[0-9a-f]+$/ || length(s) > 4) { bad = 1; return "" }
            return substr("0000", 1, 4 - length(s)) s
        }
        {
            a = tolower($0); bad = 0
            if (a ~ /^[0-9.]+$/) { print v4(a); exit }
            sub(/%.*/, "", a)
            if (a !~ /^[0-9a-f:.]+$/ || index(a, ":") == 0) exit
            if (index(a, ".")) {
                n = split(a, parts, ":"); tail = v4(parts[n])
                if (tail == "") exit
                a = substr(a, 1, length(a) - length(parts[n])) substr(tail, 1, 4) ":" substr(tail, 5, 4)
            }
            out = ""
            gap = index(a, "::")
            if (gap) {
                left = substr(a, 1, gap - 1); right = substr(a, gap + 2)
                if (index(right, "::")) exit
                nl = (left == "") ? 0 : split(left, l, ":")
                nr = (right == "") ? 0 : split(right, r, ":")
                if (nl + nr > 7) exit
                for (i = 1; i <= nl; i++) out = out group(l[i])
                for (i = 0; i < 8 - nl - nr; i++) out = out "0000"
                for (i = 1; i <= nr; i++) out = out group(r[i])
            } else {
                if (split(a, g, ":") != 8) exit
                for (i = 1; i <= 8; i++) out = out group(g[i])
            }
            if (!bad && substr(out, 1, 24) != "00000000000000000000ffff") print out
        }'
}

is_hex() {  # $1 text, $2 number of hex digits
    case $1 in *[!0-9a-f]*) return 1 ;; esac
    [ "${#1}" -eq "$2" ]
}

is_number() {  # decimal, no leading zero (printf would read it as octal)
    case $1 in '' | *[!0-9]* | 0?*) return 1 ;; esac
    [ "${#1}" -le 10 ]
}

# $1 <= $2 for whole numbers, in awk (doubles): shells with 32-bit arithmetic
# (mksh, old busybox builds) would overflow on times after 2038.
at_most() {
    awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 <= b + 0) }'
}

# ------------------------------------------------------------------ crypto

# Bytes on stdin -> SHA-256 in hex. OpenSSL 3 prints "SHA2-256(stdin)= h",
# 1.1 "(stdin)= h", LibreSSL "h" or "(stdin)= h": the hash is the last field.
sha256() {
    openssl dgst -sha256 | awk '{ print tolower($NF) }'
}

# "KEY MESSAGE" (hex) on stdin -> HMAC-SHA256 (RFC 2104) in hex. KEY is at
# most 64 bytes (ours are 32).
hmac_sha256() {
    read -r hm_key hm_message || return 1
    while [ "${#hm_key}" -lt 128 ]; do hm_key="${hm_key}00"; done
    hm_ipad=$(printf '%s %s\n' "$hm_key" "$(repeat_hex 36 64)" | hex_xor)
    hm_inner=$(printf '%s%s\n' "$hm_ipad" "$hm_message" | hex_bin | sha256)
    hm_opad=$(printf '%s %s\n' "$hm_key" "$(repeat_hex 5c 64)" | hex_xor)
    printf '%s%s\n' "$hm_opad" "$hm_inner" | hex_bin | sha256
}

repeat_hex() {  # $1 one byte in hex, $2 count
    rp_out=''
    rp_n=0
    while [ "$rp_n" -lt "$2" ]; do rp_out="$rp_out$1"; rp_n=$((rp_n + 1)); done
    printf '%s' "$rp_out"
}

# One AES-256 block under the obfuscation key: hex on stdin -> hex.
aes_block() {
    hex_bin | openssl enc -aes-256-ecb -nopad -K "$OBFUSCATION_KEY" | bin_hex
}

text_hex() {
    printf '%s' "$1" | bin_hex
}

# The 16-byte compact token, as in docs/protocol.md:
#   P = 0x10|mode, key id (2), time (4), request index (1),
#       HMAC-SHA256(K_mac, "spa1 compact" | P[0:8] | A)[0:8]
#   T = AES-256-ECB(O, P)
# $1 mode (0 source, 1 unbound, 2 explicit), $2 A in hex (may be empty).
compact_token() {
    ct_head=$(printf '%02x%04x%08x%02x' $((16 + $1)) "$KEY_ID" "$TIME" "$REQUEST_INDEX")
    ct_mac=$(printf '%s %s%s%s\n' "$MAC_KEY" "$(text_hex 'spa1 compact')" "$ct_head" "$2" | hmac_sha256) ||
        die "openssl dgst failed"
    is_hex "$ct_mac" 64 || die "openssl dgst -sha256 gave no hash (is openssl installed?)"
    ct_token=$(printf '%s%s\n' "$ct_head" "$(printf '%s' "$ct_mac" | cut -c1-16)" | aes_block)
    is_hex "$ct_token" 32 || die "openssl enc -aes-256-ecb failed"
    printf '%s\n' "$ct_token"
}

# The extended token: T (mode 2, A in its MAC) | A xor AES-256-ECB(O, T)[0:len(A)].
extended_token() {
    et_token=$(compact_token 2 "$1") || exit 1
    et_pad=$(printf '%s\n' "$et_token" | aes_block)
    is_hex "$et_pad" 32 || die "openssl enc -aes-256-ecb failed"
    et_pad=$(printf '%s' "$et_pad" | cut -c1-"${#1}")
    printf '%s%s\n' "$et_token" "$(printf '%s %s\n' "$1" "$et_pad" | hex_xor)"
}

# ---------------------------------------------------------------- key file

# The one key file to use: -k, $SPA_KEY, or the only ~/.config/spa/*.spakey.
find_key() {
    if [ -n "$KEY" ]; then
        return
    fi
    if [ -n "${SPA_KEY:-}" ]; then
        KEY=$SPA_KEY
        return
    fi
    fk_dir="${XDG_CONFIG_HOME:-${HOME:-}/.config}/spa"
    fk_found=''
    for fk_file in "$fk_dir"/*.spakey; do
        [ -e "$fk_file" ] || continue
        [ -z "$fk_found" ] || die "several key files in $fk_dir: choose one with -k"
        fk_found=$fk_file
    done
    [ -n "$fk_found" ] || die "no key file: give -k KEYFILE, set SPA_KEY, or put one in $fk_dir/"
    KEY=$fk_found
}

# Refuse a key file that group or others may read (as ssh does). ls -l is
# the one mode display GNU, BSD and busybox share (stat's flags differ).
check_private() {
    [ -f "$KEY" ] || die "$KEY: no such key file"
    [ -r "$KEY" ] || die "$KEY: cannot read it"
    cp_mode=$(ls -lLd -- "$KEY" 2>/dev/null) || die "$KEY: cannot see its mode"
    cp_mode=${cp_mode%% *}
    case $cp_mode in
        ?????????? | ??????????[.+@]) ;;
        *) die "$KEY: unexpected mode '$cp_mode' from ls" ;;
    esac
    case $cp_mode in
        ?[r-][w-][xsS-]------*) ;;
        *) die "$KEY is readable by group or others (mode $cp_mode); secrets must be private: run 'chmod 600 $KEY'" ;;
    esac
}

# The value of one `option = value` line: "quoted" or 'quoted' strings as
# written, bare values (numbers) up to a comment. Empty if absent.
key_value() {
    kv_lines=$(printf '%s\n' "$KEY_TEXT" | sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p")
    case $kv_lines in
        *"$NL"*) die "$KEY: $1 is set more than once" ;;
    esac
    printf '%s\n' "$kv_lines" | sed \
        -e 's/^"\([^"]*\)"[[:space:]]*\(#.*\)\{0,1\}$/\1/' -e t \
        -e "s/^'\\([^']*\\)'[[:space:]]*\\(#.*\\)\\{0,1\\}\$/\\1/" -e t \
        -e 's/[[:space:]]*#.*$//' -e 's/[[:space:]]*$//'
}

# tcp/22, TCP/22 or 22 -> tcp/22; nothing if it is not a request.
normal_request() {
    nr_text=$(printf '%s' "$1" | tr -d ' \t' | tr 'ABCDEFGHIJKLMNOPQRSTUVWXYZ' 'abcdefghijklmnopqrstuvwxyz')
    case $nr_text in
        */*) nr_proto=${nr_text%%/*} nr_port=${nr_text#*/} ;;
        *) nr_proto=tcp nr_port=$nr_text ;;
    esac
    case $nr_proto in tcp | udp) ;; *) return ;; esac
    case $nr_port in '' | *[!0-9]*) return ;; esac
    nr_port=$(printf '%s' "$nr_port" | sed 's/^0*//')
    if [ -z "$nr_port" ] || ! at_most "$nr_port" 65535; then return; fi
    printf '%s/%s\n' "$nr_proto" "$nr_port"
}

read_key() {
    KEY_TEXT=$(tr -d '\r' <"$KEY") || die "$KEY: cannot read it"
    [ "$(key_value format)" = spa-key-1 ] ||
        die "$KEY: format is not \"spa-key-1\" (is this an spa client key file?)"

    NAME=$(key_value name)
    case $NAME in
        [a-z]*) ;;
        *) die "$KEY: name: expected lowercase letters and digits, starting with a letter" ;;
    esac
    case $NAME in *[!a-z0-9]*) die "$KEY: name: expected lowercase letters and digits" ;; esac
    [ "${#NAME}" -le 12 ] || die "$KEY: name: expected 1-12 lowercase letters and digits"

    KEY_ID=$(key_value key_id)
    if ! is_number "$KEY_ID" || ! at_most "$KEY_ID" 65535 || [ "$KEY_ID" = 0 ]; then
        die "$KEY: key_id: expected a whole number 1-65535"
    fi

    OBFUSCATION_KEY=$(key_value obfuscation_key | tr 'ABCDEF' 'abcdef')
    is_hex "$OBFUSCATION_KEY" 64 || die "$KEY: obfuscation_key: expected 64 hex digits"
    SECRET=$(key_value secret | tr 'ABCDEF' 'abcdef')
    if [ -z "$SECRET" ]; then
        [ -z "$(key_value signing_key)" ] || die "$KEY: an Ed25519 key can only knock by UDP (use the Python client)"
        die "$KEY: secret: missing"
    fi
    is_hex "$SECRET" 64 || die "$KEY: secret: expected 64 hex digits"

    SERVER=$(key_value server)
    valid_host "$SERVER" || die "$KEY: server: expected an address or a host name"
    ZONE=$(key_value zone | tr 'ABCDEFGHIJKLMNOPQRSTUVWXYZ' 'abcdefghijklmnopqrstuvwxyz' | sed 's/^\.*//; s/\.*$//')
    case $ZONE in *[!a-z0-9.-]*) die "$KEY: zone: expected a DNS name such as knock.example.com" ;; esac
    OPEN=$(key_value open)
    [ -n "$OPEN" ] || die "$KEY: open: missing"
    DEFAULT_OPEN=$(key_value default_open)
}

# Position of the request in the key's open list (tokens name ports by it).
find_request() {
    fr_want=$(normal_request "$1")
    [ -n "$fr_want" ] || die "-o $1: expected proto/port such as tcp/22"
    fr_index=0
    fr_saved_ifs=$IFS
    IFS=,
    set -f
    for fr_item in $OPEN; do
        if [ "$(normal_request "$fr_item")" = "$fr_want" ] && [ "$fr_index" -le 255 ]; then
            IFS=$fr_saved_ifs
            set +f
            REQUEST=$fr_want
            REQUEST_INDEX=$fr_index
            return
        fi
        fr_index=$((fr_index + 1))
    done
    IFS=$fr_saved_ifs
    set +f
    die "this key may open $OPEN, not $fr_want"
}

# ----------------------------------------------------------------- network

# Characters of host names and addresses (with a %zone); no option look-alikes.
valid_host() {
    case $1 in
        -* | *[!A-Za-z0-9.:%_-]*) return 1 ;;
    esac
}

is_address() {
    [ -n "$(addr_hex "$1")" ]
}

family() {  # 4 or 6
    case $1 in *:*) echo 6 ;; *) echo 4 ;; esac
}

# A name -> one address, of family $2 if given (4 or 6). Empty if unknown.
resolve() {
    if is_address "$1"; then
        printf '%s\n' "$1"
        return
    fi
    rs_found=''
    if have getent; then
        # glibc: ahosts is getaddrinfo's order, the one ping uses. The BSDs'
        # getent knows only hosts.
        case ${2:-} in
            4) rs_found=$(getent ahostsv4 "$1" 2>/dev/null | awk 'NR == 1 { print $1 }') ;;
            6) rs_found=$(getent ahostsv6 "$1" 2>/dev/null | awk 'NR == 1 { print $1 }') ;;
            *) rs_found=$(getent ahosts "$1" 2>/dev/null | awk 'NR == 1 { print $1 }') ;;
        esac
        if [ -z "$rs_found" ]; then
            rs_found=$(getent hosts "$1" 2>/dev/null | awk -v want="${2:-}" '
                want == "" || (want == 6) == (index($1, ":") > 0) { print $1; exit }')
        fi
    fi
    if [ -n "$rs_found" ]; then
        printf '%s\n' "$rs_found"
    elif have dscacheutil; then  # macOS
        dscacheutil -q host -a name "$1" 2>/dev/null | awk -v want="${2:-4}" '
            $1 == "ip_address:" && want == 4 { print $2; exit }
            $1 == "ipv6_address:" && want == 6 { print $2; exit }'
    fi
}

# The local address the system would use to reach $1 (an address).
local_address() {
    la_found=''
    if have ip; then  # Linux: "... dev eth0 src 192.0.2.5 uid 1000"
        la_found=$(ip route get "$1" 2>/dev/null |
            awk '{ for (i = 1; i < NF; i++) if ($i == "src") { print $(i + 1); exit } }')
    fi
    if [ -z "$la_found" ] && have route && have ifconfig; then  # macOS, BSD
        if [ "$(family "$1")" = 6 ]; then la_family=-inet6; else la_family=-inet; fi
        la_interface=$(route -n get "$la_family" "$1" 2>/dev/null | awk '$1 == "interface:" { print $2; exit }')
        if [ -n "$la_interface" ]; then
            la_found=$(ifconfig "$la_interface" 2>/dev/null | awk -v six="$(family "$1")" '
                six == 4 && $1 == "inet" { print $2; exit }
                six == 6 && $1 == "inet6" && $2 !~ /^fe80/ && !/deprecated|tentative|detached/ {
                    if (/temporary/) { print $2; done = 1; exit }
                    if (first == "") first = $2
                }
                END { if (!done && first != "") print first }' | sed 's/%.*//')
        fi
    fi
    if is_address "$la_found"; then printf '%s\n' "$la_found"; fi
}

# ------------------------------------------------------------------- main

KEY='' MODE=icmp ADDRESS='' REQUEST='' DNS_SERVER='' TIME='' PRINT_ONLY=''
while getopts 'k:v:i:o:s:t:nh' option; do
    case $option in
        k) KEY=$OPTARG ;;
        v) MODE=$OPTARG ;;
        i) ADDRESS=$OPTARG ;;
        o) REQUEST=$OPTARG ;;
        s) DNS_SERVER=$OPTARG ;;
        t) TIME=$OPTARG ;;
        n) PRINT_ONLY=1 ;;
        h) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -le 1 ] || { usage >&2; exit 2; }
HOST=${1:-}

case $MODE in
    icmp | dns) ;;
    *) die "-v $MODE: expected dns or icmp" ;;
esac
have openssl || die "needs the openssl command (Termux: pkg install openssl-tool)"

find_key
check_private
read_key
MAC_KEY=$(printf '%s %s\n' "$SECRET" "$(text_hex 'spa1 token mac')" | hmac_sha256)
is_hex "$MAC_KEY" 64 || die "openssl dgst -sha256 gave no hash"
find_request "${REQUEST:-${DEFAULT_OPEN:-${OPEN%%,*}}}"

if [ -z "$TIME" ]; then
    TIME=$(date +%s 2>/dev/null)
    # POSIX fallback: srand() seeds with the time of day and returns the previous seed.
    is_number "$TIME" || TIME=$(awk 'BEGIN { srand(); print srand() }')
fi
if ! is_number "$TIME" || ! at_most "$TIME" 4294967295; then
    die "-t $TIME: expected Unix seconds (32 bits)"
fi

for check_address in "$ADDRESS" "$DNS_SERVER" "$HOST"; do
    valid_host "$check_address" || die "'$check_address' is not an address or a host name"
done
if [ -n "$ADDRESS" ] && [ "$ADDRESS" != none ]; then
    is_address "$ADDRESS" || die "-i $ADDRESS: expected an IPv4 or IPv6 address (or none)"
fi

# The address a token binds: -i, else the local address toward $1 (a host).
bound_address() {
    if [ -n "$ADDRESS" ]; then
        printf '%s\n' "$ADDRESS"
        return
    fi
    ba_local=$(local_address "$1")
    [ -n "$ba_local" ] || die "cannot tell which local address reaches $1: give it with -i ADDRESS"
    if is_private "$ba_local" && ! is_private "$1"; then
        note "$ba_local is a private address: behind NAT the server sees your public one; give that with -i"
    fi
    printf '%s\n' "$ba_local"
}

# RFC 1918, shared (CGNAT), loopback and link-local IPv4; IPv6 ULA and link-local.
is_private() {
    case $1 in
        10.* | 192.168.* | 172.1[6-9].* | 172.2[0-9].* | 172.3[01].* | 127.* | 169.254.*) return 0 ;;
        100.6[4-9].* | 100.[7-9][0-9].* | 100.1[01][0-9].* | 100.12[0-7].*) return 0 ;;
        [Ff][CcDd]*:* | [Ff][Ee][89AaBb]*:* | ::1) return 0 ;;
    esac
    return 1
}

# A compact token for the address $1 (none: unbound).
compact_for() {
    if [ "$1" = none ]; then
        compact_token 1 ''
    else
        compact_token 0 "$(addr_hex "$1")"
    fi
}

# target_for NAME WHAT: set TARGET to NAME's address in the family of -i (if
# any), or to NAME itself when it cannot be resolved here but -i says what to
# open; refuse an -i of the other family: WHAT only opens the family it travels in.
target_for() {
    WANT_FAMILY=''
    if [ -n "$ADDRESS" ] && [ "$ADDRESS" != none ]; then WANT_FAMILY=$(family "$ADDRESS"); fi
    TARGET=$(resolve "$1" "$WANT_FAMILY")
    if [ -z "$TARGET" ]; then
        [ -n "$ADDRESS" ] || die "cannot resolve $1: give its address, or your address with -i"
        TARGET=$1  # the tool resolves it; -i says what to open
    elif [ -n "$WANT_FAMILY" ] && [ "$(family "$TARGET")" != "$WANT_FAMILY" ]; then
        die "-i $ADDRESS is IPv$WANT_FAMILY but $1 is IPv$(family "$TARGET") ($TARGET): $2 opens only the family it travels in"
    fi
}

if [ "$MODE" = icmp ]; then
    [ -z "$DNS_SERVER" ] || die "-s is for -v dns"
    HOST=${HOST:-$SERVER}
    [ -n "$HOST" ] || die "no HOST given and the key file names no server"
    target_for "$HOST" "a ping"
    BOUND=$(bound_address "$TARGET") || exit 1
    TOKEN=$(compact_for "$BOUND") || exit 1
    if [ "$(family "$TARGET")" = 6 ] && [ "$(uname -s 2>/dev/null)" != Linux ]; then
        # FreeBSD's and macOS's ping6 carry the pattern only with -s 56;
        # FreeBSD 13 and later may have only ping -6.
        if have ping6; then
            set -- ping6 -c 2 -s 56 -p "$TOKEN" "$TARGET"
        else
            set -- ping -6 -c 2 -s 56 -p "$TOKEN" "$TARGET"
        fi
    else
        set -- ping -c 2 -p "$TOKEN" "$TARGET"
    fi
    WHAT="icmp knock to $HOST"
    if [ -z "$PRINT_ONLY" ]; then
        case $(ls -l "$(command -v "$1")" 2>/dev/null) in
            *busybox*) die "BusyBox's $1 sends only one byte of a -p pattern: install iputils' ping, or knock with -v dns" ;;
        esac
    fi
else
    [ -z "$HOST" ] || die "-v dns takes no HOST (ask the spa server directly with -s SERVER)"
    [ -n "$ZONE" ] || die "$KEY names no zone: DNS knocks need the server's knock zone"
    if [ -n "$DNS_SERVER" ]; then
        # Direct: the server sees our own address, so a compact token is enough.
        target_for "$DNS_SERVER" "a direct query"
        BOUND=$(bound_address "$TARGET") || exit 1
        TOKEN=$(compact_for "$BOUND") || exit 1
    else
        # Through a resolver the server sees the resolver's address: the token names ours.
        if [ -z "$ADDRESS" ] || [ "$ADDRESS" = none ]; then
            die "-v dns through a resolver needs -i ADDRESS: the server sees the resolver, so the token must name the address to open (your public one behind NAT); or ask the server directly with -s SERVER"
        fi
        BOUND=$ADDRESS
        TOKEN=$(extended_token "$(addr_hex "$ADDRESS")") || exit 1
    fi
    # Trailing dot: no resolver appends a search domain.
    QUERY="$(printf '%s\n' "$TOKEN" | hex_base32).$ZONE."
    # Asking the address the token was bound for, not a name the tool might
    # resolve to the other family.
    ASK=${DNS_SERVER:+$TARGET}
    if have nslookup; then
        set -- nslookup "$QUERY" ${ASK:+"$ASK"}
    elif have dig; then
        set -- dig ${ASK:+"@$ASK"} "$QUERY"
    else
        [ -n "$PRINT_ONLY" ] || die "needs nslookup or dig (Debian: apt install bind9-dnsutils; Termux: pkg install dnsutils)"
        set -- nslookup "$QUERY" ${ASK:+"$ASK"}
    fi
    WHAT="dns knock${DNS_SERVER:+ to $DNS_SERVER}"
fi

if [ "$BOUND" = none ]; then OPENS="the address it comes from (unbound)"; else OPENS=$BOUND; fi
note "$WHAT as $NAME: $REQUEST for $OPENS, time $TIME"
if [ -n "$PRINT_ONLY" ]; then
    printf '%s\n' "$*"
    exit 0
fi
"$@"
status=$?
if [ "$status" -ne 0 ]; then
    # No reply is not a refusal: the server answers every knock alike, and
    # may silence echo replies. Exit 0 so `knock.sh && ssh host` still tries.
    note "$1 exited $status: no reply is normal (the server may stay silent); if it printed an error, the knock was not sent"
fi
exit 0
