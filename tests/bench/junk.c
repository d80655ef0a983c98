/*
 * junk: a bounded, paced junk sender for spa's benchmarks (tests/bench).
 *
 * Fires junk at a server's knock ports through sendmmsg(2), in batches, at
 * a given rate, and stops by itself after a packet count or a number of
 * seconds, whichever comes first (or on SIGTERM/SIGINT). Python tops out
 * near the rates the benchmarks need to go past; this does not.
 *
 * Payload kinds, each KIND[:PORTS] (PORTS: 53 or 7000-7100 or 1,2,5-9):
 *   random  UDP, --size random bytes
 *   spa     UDP, random bytes of a random size inside the SPA datagram range
 *           (39-164): every one reaches spa's gate
 *   dns     UDP, a query for A <26 or 32 random base32 chars>.<--zone>: the
 *           shape of a compact or extended token label
 *   syn     TCP SYN with a random source port and sequence number (raw socket)
 *   icmp    echo request, 56 data bytes: 16 random "timestamp" bytes, then a
 *           random 16-byte token repeated, as `ping -p` lays it out (raw socket)
 * Several --kind options are sent in turn, packet by packet.
 *
 * --spoof PREFIX/LEN sends every packet from one of --sources addresses in
 * PREFIX through a raw socket with IP_HDRINCL (we write the IP header); the
 * source advances every (number of kinds) packets, so each source sends each
 * kind. syn and icmp need --spoof (a /32 for one fixed source).
 *
 * Prints {"ready": true} once its socket is open, and at the end one JSON
 * line: packets sent, seconds, failed sendmmsg calls, packets per kind.
 * Every packet has fresh random bytes, so no two are alike.
 *
 * Build: gcc -O2 -Wall -o build/junk tests/bench/junk.c (scripts/setup.sh does).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SECONDS 600.0      /* no run is longer, whatever was asked */
#define MAX_COUNT 100000000L   /* nor sends more */
#define MAX_BATCH 1024
#define SLOT 1500              /* bytes per message buffer */
#define MAX_KINDS 8
#define MAX_RANGES 64
#define MAX_SIZE 1400          /* largest --size (fits SLOT with headers) */
#define SPA_MIN 39
#define SPA_MAX 164

enum kind { RANDOM, SPA, DNS, SYN, ICMP };
static const char *const KIND_NAMES[] = {"random", "spa", "dns", "syn", "icmp"};

struct ports {
    int low[MAX_RANGES], high[MAX_RANGES];
    int ranges;
    long total;
};

struct kind_spec {
    enum kind kind;
    struct ports ports;
    long sent;
};

struct options {
    struct in_addr dest;
    struct kind_spec kinds[MAX_KINDS];
    int nkinds;
    long rate, count;
    double seconds;
    int size, batch;
    const char *zone;
    int spoof;
    uint32_t spoof_base; /* host order, network address of the prefix */
    uint32_t spoof_span; /* addresses in the prefix */
    long sources;
    uint64_t seed;
};

static volatile sig_atomic_t stop;

static void on_signal(int number) {
    (void)number;
    stop = 1;
}

static void die(const char *message) {
    fprintf(stderr, "junk: %s\n", message);
    exit(2);
}

/* xorshift64*: fast, and plenty random for junk */
static uint64_t state;

static uint64_t next_random(void) {
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545F4914F6CDD1DULL;
}

static void fill_random(uint8_t *out, size_t length) {
    while (length >= 8) {
        uint64_t value = next_random();
        memcpy(out, &value, 8);
        out += 8;
        length -= 8;
    }
    if (length) {
        uint64_t value = next_random();
        memcpy(out, &value, length);
    }
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void parse_ports(const char *text, struct ports *ports) {
    char copy[512];
    if (strlen(text) >= sizeof copy) die("port list too long");
    strcpy(copy, text);
    char *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        if (ports->ranges == MAX_RANGES) die("too many port ranges");
        char *end;
        long low = strtol(item, &end, 10), high = low;
        if (*end == '-') high = strtol(end + 1, &end, 10);
        if (*end || low < 1 || high > 65535 || low > high) die("bad port or range (1-65535, LOW-HIGH)");
        ports->low[ports->ranges] = (int)low;
        ports->high[ports->ranges] = (int)high;
        ports->total += high - low + 1;
        ports->ranges++;
    }
    if (!ports->ranges) die("empty port list");
}

static int pick_port(const struct ports *ports) {
    long index = (long)(next_random() % (uint64_t)ports->total);
    for (int i = 0; i < ports->ranges; i++) {
        long span = ports->high[i] - ports->low[i] + 1;
        if (index < span) return ports->low[i] + (int)index;
        index -= span;
    }
    return ports->low[0];
}

static void parse_kind(const char *text, struct options *options) {
    if (options->nkinds == MAX_KINDS) die("too many --kind options");
    struct kind_spec *spec = &options->kinds[options->nkinds];
    memset(spec, 0, sizeof *spec);
    const char *colon = strchr(text, ':');
    size_t length = colon ? (size_t)(colon - text) : strlen(text);
    int found = -1;
    for (int i = 0; i < 5; i++)
        if (strlen(KIND_NAMES[i]) == length && !strncmp(text, KIND_NAMES[i], length)) found = i;
    if (found < 0) die("unknown kind (random, spa, dns, syn, icmp)");
    for (int i = 0; i < options->nkinds; i++)
        if (options->kinds[i].kind == (enum kind)found) die("each kind at most once (list its ports instead)");
    spec->kind = (enum kind)found;
    if (spec->kind == ICMP) {
        if (colon) die("icmp takes no ports");
    } else {
        if (!colon) die("random, spa, dns and syn need :PORTS");
        parse_ports(colon + 1, &spec->ports);
    }
    options->nkinds++;
}

static double parse_number(const char *text, const char *what, double low, double high) {
    char *end;
    double value = strtod(text, &end);
    if (*end || end == text || value < low || value > high) {
        fprintf(stderr, "junk: --%s must be a number from %g to %g\n", what, low, high);
        exit(2);
    }
    return value;
}

static void usage(void) {
    fprintf(stderr,
            "usage: junk --dest IPV4 --kind KIND[:PORTS] [--kind ...] --rate N --seconds S --count N\n"
            "            [--size BYTES] [--zone NAME] [--spoof PREFIX/LEN --sources N] [--batch N] [--seed N]\n"
            "kinds: random:PORTS spa:PORTS dns:PORTS syn:PORTS icmp   (rate 0: as fast as it can)\n");
    exit(2);
}

static void parse(int argc, char **argv, struct options *options) {
    static const struct option long_options[] = {
        {"dest", required_argument, 0, 'd'},   {"kind", required_argument, 0, 'k'},
        {"rate", required_argument, 0, 'r'},   {"seconds", required_argument, 0, 't'},
        {"count", required_argument, 0, 'n'},  {"size", required_argument, 0, 's'},
        {"zone", required_argument, 0, 'z'},   {"spoof", required_argument, 0, 'p'},
        {"sources", required_argument, 0, 'S'}, {"batch", required_argument, 0, 'b'},
        {"seed", required_argument, 0, 'e'},   {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int have_dest = 0, have_rate = 0, have_seconds = 0, have_count = 0;
    memset(options, 0, sizeof *options);
    options->size = 64;
    options->batch = 256;
    options->zone = "knock.test";
    int option;
    while ((option = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
        switch (option) {
        case 'd':
            if (inet_pton(AF_INET, optarg, &options->dest) != 1) die("--dest must be an IPv4 address");
            have_dest = 1;
            break;
        case 'k': parse_kind(optarg, options); break;
        case 'r': options->rate = (long)parse_number(optarg, "rate", 0, 1e8); have_rate = 1; break;
        case 't': options->seconds = parse_number(optarg, "seconds", 0.001, MAX_SECONDS); have_seconds = 1; break;
        case 'n': options->count = (long)parse_number(optarg, "count", 1, (double)MAX_COUNT); have_count = 1; break;
        case 's': options->size = (int)parse_number(optarg, "size", 0, MAX_SIZE); break;
        case 'z':
            if (strlen(optarg) == 0 || strlen(optarg) > 200) die("--zone must be 1-200 characters");
            options->zone = optarg;
            break;
        case 'p': {
            char copy[64];
            if (strlen(optarg) >= sizeof copy) die("bad --spoof prefix");
            strcpy(copy, optarg);
            char *slash = strchr(copy, '/');
            int bits = 32;
            if (slash) {
                *slash = 0;
                bits = (int)parse_number(slash + 1, "spoof prefix length", 8, 32);
            }
            struct in_addr base;
            if (inet_pton(AF_INET, copy, &base) != 1) die("--spoof must be IPV4/LEN");
            uint32_t mask = bits == 32 ? 0xffffffffu : ~(0xffffffffu >> bits);
            options->spoof_base = ntohl(base.s_addr) & mask;
            options->spoof_span = bits == 32 ? 1 : (0xffffffffu >> bits) + 1;
            options->spoof = 1;
            break;
        }
        case 'S': options->sources = (long)parse_number(optarg, "sources", 1, 16777216); break;
        case 'b': options->batch = (int)parse_number(optarg, "batch", 1, MAX_BATCH); break;
        case 'e': options->seed = (uint64_t)parse_number(optarg, "seed", 1, 1e15); break;
        default: usage();
        }
    }
    if (optind != argc || !have_dest || !have_rate || !have_seconds || !have_count || !options->nkinds) usage();
    for (int i = 0; i < options->nkinds; i++)
        if ((options->kinds[i].kind == SYN || options->kinds[i].kind == ICMP) && !options->spoof)
            die("syn and icmp need --spoof PREFIX/LEN (a /32 for one fixed source)");
    if (options->spoof) {
        /* Usable hosts: skip the network and broadcast addresses of prefixes wider than /31. */
        uint32_t usable = options->spoof_span > 2 ? options->spoof_span - 2 : options->spoof_span;
        if (!options->sources) options->sources = usable;
        if ((uint64_t)options->sources > usable) die("--sources is larger than the prefix");
    } else if (options->sources) {
        die("--sources needs --spoof");
    }
}

/* ---- packet building ------------------------------------------------------ */

static uint32_t sum16(const uint8_t *data, size_t length, uint32_t sum) {
    for (size_t i = 0; i + 1 < length; i += 2) sum += (uint32_t)(data[i] << 8 | data[i + 1]);
    if (length & 1) sum += (uint32_t)(data[length - 1] << 8);
    return sum;
}

static uint16_t fold(uint32_t sum) {
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static void put16(uint8_t *at, uint16_t value) {
    at[0] = (uint8_t)(value >> 8);
    at[1] = (uint8_t)value;
}

/* The transport checksum over the IPv4 pseudo-header and the segment. */
static uint16_t transport_checksum(const uint8_t *source, const uint8_t *dest, uint8_t protocol,
                                   const uint8_t *segment, size_t length) {
    uint8_t pseudo[12];
    memcpy(pseudo, source, 4);
    memcpy(pseudo + 4, dest, 4);
    pseudo[8] = 0;
    pseudo[9] = protocol;
    put16(pseudo + 10, (uint16_t)length);
    return fold(sum16(segment, length, sum16(pseudo, 12, 0)));
}

/* A UDP payload of this kind into out; its length. */
static size_t udp_payload(const struct options *options, enum kind kind, uint8_t *out) {
    static const char BASE32[] = "abcdefghijklmnopqrstuvwxyz234567";
    if (kind == RANDOM) {
        fill_random(out, (size_t)options->size);
        return (size_t)options->size;
    }
    if (kind == SPA) {
        size_t length = SPA_MIN + next_random() % (SPA_MAX - SPA_MIN + 1);
        fill_random(out, length);
        return length;
    }
    /* DNS: header (random id, RD), one question for A IN. */
    uint8_t *at = out;
    fill_random(at, 2);
    put16(at + 2, 0x0100);
    put16(at + 4, 1);
    memset(at + 6, 0, 6);
    at += 12;
    size_t label = next_random() & 1 ? 32 : 26; /* extended or compact token, base32 */
    *at++ = (uint8_t)label;
    for (size_t i = 0; i < label; i++) *at++ = (uint8_t)BASE32[next_random() & 31];
    const char *zone = options->zone;
    while (*zone) {
        const char *dot = strchr(zone, '.');
        size_t part = dot ? (size_t)(dot - zone) : strlen(zone);
        if (part == 0 || part > 63) break;
        *at++ = (uint8_t)part;
        memcpy(at, zone, part);
        at += part;
        zone += part + (dot ? 1 : 0);
    }
    *at++ = 0;
    put16(at, 1);
    put16(at + 2, 1);
    at += 4;
    return (size_t)(at - out);
}

/* A whole IPv4 packet (raw socket, IP_HDRINCL) from source; its length. */
static size_t raw_packet(const struct options *options, const struct kind_spec *spec, uint32_t source,
                         uint8_t *out) {
    uint8_t *ip = out, *l4 = out + 20;
    uint8_t protocol;
    size_t l4_length;
    uint32_t source_n = htonl(source);
    if (spec->kind == SYN) {
        protocol = 6;
        memset(l4, 0, 20);
        put16(l4, (uint16_t)(1024 + next_random() % 64512));
        put16(l4 + 2, (uint16_t)pick_port(&spec->ports));
        fill_random(l4 + 4, 4); /* sequence number */
        l4[12] = 5 << 4;        /* data offset: 20 bytes */
        l4[13] = 0x02;          /* SYN */
        put16(l4 + 14, 64240);
        l4_length = 20;
    } else if (spec->kind == ICMP) {
        protocol = 1;
        l4[0] = 8; /* echo request */
        l4[1] = 0;
        l4[2] = l4[3] = 0;
        fill_random(l4 + 4, 4);      /* identifier, sequence */
        fill_random(l4 + 8, 16);     /* the "timestamp" */
        fill_random(l4 + 24, 16);    /* the token */
        memcpy(l4 + 40, l4 + 24, 16); /* repeated, as ping -p does */
        memcpy(l4 + 56, l4 + 24, 8);
        l4_length = 8 + 56;
        put16(l4 + 2, fold(sum16(l4, l4_length, 0)));
    } else {
        protocol = 17;
        size_t payload = udp_payload(options, spec->kind, l4 + 8);
        l4_length = 8 + payload;
        put16(l4, (uint16_t)(1024 + next_random() % 64512));
        put16(l4 + 2, (uint16_t)pick_port(&spec->ports));
        put16(l4 + 4, (uint16_t)l4_length);
        l4[6] = l4[7] = 0;
    }
    ip[0] = 0x45;
    ip[1] = 0;
    put16(ip + 2, (uint16_t)(20 + l4_length));
    fill_random(ip + 4, 2); /* identification */
    put16(ip + 6, 0x4000);  /* don't fragment */
    ip[8] = 64;
    ip[9] = protocol;
    ip[10] = ip[11] = 0;
    memcpy(ip + 12, &source_n, 4);
    memcpy(ip + 16, &options->dest.s_addr, 4);
    put16(ip + 10, fold(sum16(ip, 20, 0)));
    if (protocol == 6) put16(l4 + 16, transport_checksum(ip + 12, ip + 16, 6, l4, l4_length));
    if (protocol == 17) {
        uint16_t checksum = transport_checksum(ip + 12, ip + 16, 17, l4, l4_length);
        put16(l4 + 6, checksum ? checksum : 0xffff); /* 0 means "no checksum" in UDP */
    }
    return 20 + l4_length;
}

int main(int argc, char **argv) {
    struct options options;
    parse(argc, argv, &options);
    if (options.seed) {
        state = options.seed;
    } else if (getrandom(&state, sizeof state, 0) != sizeof state) {
        die("getrandom failed");
    }
    state |= 1; /* xorshift's one forbidden state is 0 */

    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_signal; /* no SA_RESTART: a blocked send returns EINTR */
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGALRM, &action, NULL);
    /* A backstop: even a send blocked for good ends the run shortly after its time. */
    alarm((unsigned)options.seconds + 2);

    int fd = options.spoof ? socket(AF_INET, SOCK_RAW, IPPROTO_RAW) : socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        perror(options.spoof ? "junk: raw socket (needs CAP_NET_RAW)" : "junk: socket");
        return 2;
    }
    int buffer = 4 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &buffer, sizeof buffer) < 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffer, sizeof buffer);

    static uint8_t data[MAX_BATCH][SLOT];
    static struct iovec iov[MAX_BATCH];
    static struct mmsghdr messages[MAX_BATCH];
    static struct sockaddr_in addresses[MAX_BATCH];
    static int kind_of[MAX_BATCH];
    for (int i = 0; i < options.batch; i++) {
        addresses[i].sin_family = AF_INET;
        addresses[i].sin_addr = options.dest;
        iov[i].iov_base = data[i];
        messages[i].msg_hdr.msg_iov = &iov[i];
        messages[i].msg_hdr.msg_iovlen = 1;
        messages[i].msg_hdr.msg_name = &addresses[i];
        messages[i].msg_hdr.msg_namelen = sizeof addresses[i];
    }

    long sent = 0, failed = 0, built = 0;
    double start = now_s();
    double deadline = start + options.seconds;
    printf("{\"ready\": true}\n");
    fflush(stdout);
    while (!stop && sent < options.count) {
        double now = now_s();
        if (now >= deadline) break;
        long due = options.count - sent;
        if (options.rate > 0) {
            long allowed = (long)((now - start) * (double)options.rate) + 1;
            if (allowed < options.count) due = allowed - sent;
        }
        if (due <= 0) {
            double wait = start + (double)(sent + 1) / (double)options.rate - now;
            if (wait > 0.001) wait = 0.001;
            struct timespec pause = {0, (long)(wait * 1e9)};
            nanosleep(&pause, NULL);
            continue;
        }
        int batch = due < options.batch ? (int)due : options.batch;
        for (int i = 0; i < batch; i++) {
            /* Packets are numbered by how many were sent, so a failed batch is rebuilt, not skipped. */
            long number = sent + i;
            const struct kind_spec *spec = &options.kinds[number % options.nkinds];
            kind_of[i] = (int)(number % options.nkinds);
            if (options.spoof) {
                long index = (number / options.nkinds) % options.sources;
                uint32_t first = options.spoof_span > 2 ? 1 : 0;
                iov[i].iov_len = raw_packet(&options, spec, options.spoof_base + first + (uint32_t)index, data[i]);
                addresses[i].sin_port = 0;
            } else {
                iov[i].iov_len = udp_payload(&options, spec->kind, data[i]);
                addresses[i].sin_port = htons((uint16_t)pick_port(&spec->ports));
            }
        }
        built += batch;
        int done = sendmmsg(fd, messages, (unsigned)batch, 0);
        if (done < 0) {
            failed++; /* ENOBUFS, EINTR and the like: the loop decides whether to go on */
            if (errno == ENOBUFS || errno == EAGAIN) {
                struct timespec pause = {0, 50000};
                nanosleep(&pause, NULL);
            }
            continue;
        }
        for (int i = 0; i < done; i++) options.kinds[kind_of[i]].sent++;
        sent += done;
    }
    double elapsed = now_s() - start;
    close(fd);
    printf("{\"sent\": %ld, \"seconds\": %.6f, \"failed_calls\": %ld, \"built\": %ld, \"sources\": %ld, \"by_kind\": {",
           sent, elapsed, failed, built, options.spoof ? (sent < options.sources * options.nkinds ?
           (sent + options.nkinds - 1) / options.nkinds : options.sources) : 0L);
    for (int i = 0; i < options.nkinds; i++)
        printf("%s\"%s\": %ld", i ? ", " : "", KIND_NAMES[options.kinds[i].kind], options.kinds[i].sent);
    printf("}}\n");
    fflush(stdout);
    return 0;
}
