// aipaging-reflector: a STAMP Session-Reflector (RFC 8762, unauthenticated mode) for execution
// anchors, so the agent can measure two-way delay, jitter and loss in each direction on the path
// its leases steer to.
//
//   aipaging-reflector [--listen ADDR:PORT]... [--stateless] [--max-sessions N] [--idle-s S]
//
// Stateful by default (RFC 8762 §4.3): per session — sender address, port and RFC 8972 SSID — the
// reflector numbers the packets it reflects from 0, which is what lets the sender tell loss on the
// way to the reflector from loss on the way back. The state is soft: no control protocol, sessions
// idle for `--idle-s` (default 60) are forgotten, at most `--max-sessions` (default 262144) are
// kept. `--stateless` reflects the sender's sequence number instead (RFC 8762 stateless mode; the
// sender then sees round-trip loss only). Receive times are the kernel's (SO_TIMESTAMPNS).
import AIPagingCore
import AIPagingKernel
#if canImport(Glibc)
import Glibc
#endif

struct Options {
    var listen: [(IPAddress?, IPAddress.Family, UInt16)] = []
    var stateless = false
    var maxSessions = 262_144
    var idleSeconds = 60
    var quiet = false
}

/// Writes to standard error.
func say(_ s: String) {
    var line = s
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

func usage() -> Never {
    let text = """
    usage: aipaging-reflector [--listen ADDR:PORT]... [--stateless] [--max-sessions N] [--idle-s S] [--quiet]
      --listen ADDR:PORT   address to answer on (IPv6 in brackets: [2001:db8::2]:862); repeatable.
                           Default: 0.0.0.0:862 and [::]:862.
      --stateless          reflect the sender's sequence number (RFC 8762 stateless mode)
      --max-sessions N     stateful sessions kept (default 262144)
      --idle-s S           forget a session idle this long (default 60)

    """
    say(text)
    exit(2)
}

func parseListen(_ s: String) -> (IPAddress?, IPAddress.Family, UInt16)? {
    if s.hasPrefix("[") {
        guard let close = s.firstIndex(of: "]") else { return nil }
        let host = String(s[s.index(after: s.startIndex)..<close])
        let rest = s[s.index(after: close)...]
        guard rest.hasPrefix(":"), let port = UInt16(rest.dropFirst()) else { return nil }
        let addr = host == "::" ? nil : IPAddress(host)
        if host != "::" && addr == nil { return nil }
        return (addr, .ipv6, port)
    }
    guard let colon = s.lastIndex(of: ":"), let port = UInt16(s[s.index(after: colon)...]) else { return nil }
    let host = String(s[..<colon])
    if host.isEmpty || host == "0.0.0.0" { return (nil, .ipv4, port) }
    guard let a = IPAddress(host) else { return nil }
    return (a, a.family, port)
}

// A daemon: whatever signal mask it inherited, SIGTERM and SIGINT end it.
var noSignals = sigset_t()
sigemptyset(&noSignals)
sigprocmask(SIG_SETMASK, &noSignals, nil)

var opt = Options()
var args = CommandLine.arguments.dropFirst()
while let a = args.popFirst() {
    switch a {
    case "--listen":
        guard let v = args.popFirst(), let l = parseListen(v) else { say("--listen needs ADDR:PORT\n"); usage() }
        opt.listen.append(l)
    case "--stateless": opt.stateless = true
    case "--max-sessions":
        guard let v = args.popFirst(), let n = Int(v), n > 0 else { usage() }
        opt.maxSessions = n
    case "--idle-s":
        guard let v = args.popFirst(), let n = Int(v), n > 0 else { usage() }
        opt.idleSeconds = n
    case "--quiet": opt.quiet = true
    case "-h", "--help": usage()
    default:
        say("unknown argument \(a)\n")
        usage()
    }
}
if opt.listen.isEmpty { opt.listen = [(nil, .ipv4, 862), (nil, .ipv6, 862)] }

var sockets: [UDPBatchSocket] = []
for (addr, fam, port) in opt.listen {
    do {
        sockets.append(try UDPBatchSocket(family: fam, address: addr, port: port))
        if !opt.quiet {
            let shown = addr.map { fam == .ipv6 ? "[\($0)]" : "\($0)" } ?? (fam == .ipv6 ? "[::]" : "0.0.0.0")
            say("aipaging-reflector: \(opt.stateless ? "stateless" : "stateful") STAMP reflector on \(shown):\(port)\n")
        }
    } catch {
        say("aipaging-reflector: cannot listen: \(error)\n")
        exit(1)
    }
}

struct SessionKey: Hashable {
    var address: IPAddress
    var port: UInt16
    var ssid: UInt16
}
struct SessionState {
    var next: UInt32
    var lastSeen: Int64
}
var sessions: [SessionKey: SessionState] = [:]
var lastSweep = realtimeNanoseconds()
var errorEstimate = STAMPErrorEstimate.systemClock()
var lastEstimate = lastSweep

/// Errors are reported at most once a second (a firewall refusing every reply must not flood).
var lastComplaint: Int64 = 0
var suppressed = 0
@MainActor func complain(_ m: String) {
    let now = realtimeNanoseconds()
    if now - lastComplaint < 1_000_000_000 { suppressed += 1; return }
    say("aipaging-reflector: \(m)\(suppressed > 0 ? " (and \(suppressed) more)" : "")\n")
    lastComplaint = now
    suppressed = 0
}

var pfds = sockets.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
var replies = [UInt8]()
var outgoing: [UDPBatchSocket.Outgoing] = []
signal(SIGPIPE, SIG_IGN)

while true {
    let r = poll(&pfds, nfds_t(pfds.count), 1000)
    if r < 0 && errno != EINTR { perror("poll"); exit(1) }
    let now = realtimeNanoseconds()
    if now - lastEstimate > 10_000_000_000 {
        errorEstimate = STAMPErrorEstimate.systemClock()
        lastEstimate = now
    }
    if now - lastSweep > 10_000_000_000 || sessions.count > opt.maxSessions {
        let idle = Int64(opt.idleSeconds) * 1_000_000_000
        sessions = sessions.filter { now - $0.value.lastSeen < idle }
        if sessions.count > opt.maxSessions {
            // Still too many: forget the least recently seen half.
            let keep = sessions.sorted { $0.value.lastSeen > $1.value.lastSeen }.prefix(opt.maxSessions / 2)
            sessions = Dictionary(uniqueKeysWithValues: keep.map { ($0.key, $0.value) })
        }
        lastSweep = now
    }
    guard r > 0 else { continue }
    for (i, s) in sockets.enumerated() where pfds[i].revents & Int16(POLLIN) != 0 {
        var requests: [([UInt8], UDPBatchSocket.Received)] = []
        do {
            try s.receive(max: 1024) { bytes, meta in requests.append((Array(bytes), meta)) }
        } catch {
            complain("\(error)")
            continue
        }
        // Replies go out in small groups, each stamped (T3) just before its send call, so T3 is
        // within a few microseconds of when the reply actually left.
        var i = 0
        while i < requests.count {
            replies.removeAll(keepingCapacity: true)
            outgoing.removeAll(keepingCapacity: true)
            let t3 = NTPTimestamp(unixNanoseconds: realtimeNanoseconds())
            for (bytes, meta) in requests[i..<min(i + 8, requests.count)] {
                guard bytes.count >= STAMPSenderPacket.length, !meta.truncated,
                      let req = STAMPSenderPacket(bytes: bytes) else { continue }
                var seq: UInt32?
                if !opt.stateless {
                    let key = SessionKey(address: meta.address, port: meta.port, ssid: req.ssid)
                    var st = sessions[key] ?? SessionState(next: 0, lastSeen: now)
                    seq = st.next
                    st.next &+= 1
                    st.lastSeen = now
                    sessions[key] = st
                }
                let t2 = NTPTimestamp(unixNanoseconds: meta.receiveNs != 0 ? meta.receiveNs : now)
                guard let reply = STAMPReflection.reply(to: bytes, sequence: seq, receivedAt: t2, sentAt: t3,
                                                        errorEstimate: errorEstimate, ttl: UInt8(clamping: max(0, Int(meta.ttl)))) else { continue }
                outgoing.append(.init(offset: replies.count, length: reply.count, address: meta.address, port: meta.port, priority: nil))
                replies += reply
            }
            i += 8
            do {
                try s.send(outgoing, buffer: replies)
            } catch {
                complain("\(error)")
            }
        }
    }
}
