#if canImport(Glibc)
import Glibc
#endif
import AIPagingCore
import CAIPagingShim

/// A non-blocking UDP socket for measurement traffic, opened in one network namespace: datagrams
/// go out in batches (`sendmmsg`), each with its own `SO_PRIORITY` (a control message, so one
/// socket can send into many HTB classes), and come in in batches (`recvmmsg`) with the kernel's
/// receive timestamp (`SO_TIMESTAMPNS`, CLOCK_REALTIME) and TTL / hop limit.
///
/// Kernel state it touches: one socket. Owns its file descriptor (closed in `deinit`).
/// Not `Sendable`: one thread uses it (the agent's prober, the reflector's loop).
public final class UDPBatchSocket {
    public let family: IPAddress.Family
    public let fd: Int32
    /// The local port the socket is bound to.
    public let localPort: UInt16
    public private(set) var sendTimestamps = false
    /// Datagrams the kernel refused to send (see `send`).
    public private(set) var refused: UInt64 = 0
    /// Indices (into the last `send`'s items) of the datagrams that went out, in order.
    public private(set) var lastSent: [Int] = []
    /// How many of the last `send`'s items the kernel was given (sent or refused); the rest were
    /// not tried (the socket buffer was full).
    public private(set) var lastAttempted = 0
    /// Receive buffers, reused across calls (128 datagrams of up to 2 KiB).
    private var storage = [UInt8](repeating: 0, count: 2048 * 128)
    private var ins = [aip_udp_in](repeating: aip_udp_in(), count: 128)
    private var keys = [UInt32](repeating: 0, count: 128)
    private var times = [Int64](repeating: 0, count: 128)
    /// Send descriptors, reused across calls.
    private var outs = [aip_udp_out](repeating: aip_udp_out(), count: 128)

    /// Opens the socket inside `namespace`, bound to `address` (nil: any) and `port` (0: an
    /// ephemeral one). Equivalent to `socket(AF_INET[6], SOCK_DGRAM)` + `bind` in `ip netns exec`.
    public init(family: IPAddress.Family, namespace: NetworkNamespace = .current, address: IPAddress? = nil,
                port: UInt16 = 0, receiveBufferBytes: Int32 = 4 << 20) throws(KernelError) {
        let fam: UInt8 = family == .ipv6 ? 6 : 4
        let addrBytes = address?.bytes
        let fd: Int32
        do {
            fd = try withNetworkNamespace(namespace) { () throws(KernelError) -> Int32 in
                let r: Int32 = addrBytes.map { b in b.withUnsafeBufferPointer { aip_udp_open(fam, $0.baseAddress, port, receiveBufferBytes, 4 << 20) } }
                    ?? aip_udp_open(fam, nil, port, receiveBufferBytes, 4 << 20)
                if r < 0 {
                    let e = errno
                    let where_ = address.map { "\($0)" } ?? (family == .ipv6 ? "[::]" : "0.0.0.0")
                    throw KernelError("socket/bind(UDP \(where_):\(port))", errno: e,
                                      detail: e == EADDRINUSE ? "the port is in use" : (e == EACCES ? "ports below 1024 need root (CAP_NET_BIND_SERVICE)" : ""))
                }
                return r
            }
        } catch let e as KernelError {
            throw e
        } catch {
            throw KernelError("socket", errno: EINVAL, detail: "\(error)")
        }
        self.fd = fd
        self.family = family
        localPort = UInt16(truncatingIfNeeded: max(0, aip_udp_local_port(fd)))
    }

    deinit { close(fd) }

    /// Turns on kernel send timestamps (SO_TIMESTAMPING, TX_SCHED: as each datagram enters the
    /// packet scheduler of its interface, so HTB queueing counts as path delay).
    public func enableSendTimestamps() throws(KernelError) {
        try syscallRetrying("setsockopt(SO_TIMESTAMPING)") { aip_udp_enable_tx_timestamps(fd) }
        sendTimestamps = true
    }

    /// Reads the send timestamps queued so far: (key, CLOCK_REALTIME ns) per datagram, in the
    /// order the datagrams entered the packet scheduler. The kernel stamps a datagram during the
    /// send call, so after `send` these are the timestamps of `lastSent`, in order. (Keys count
    /// every datagram the socket built, including ones a firewall then refused, so they are used
    /// for order only.)
    public func readSendTimestamps(_ body: (UInt32, Int64) -> Void) {
        while true {
            let r = keys.withUnsafeMutableBufferPointer { k in
                times.withUnsafeMutableBufferPointer { t in aip_udp_read_tx_timestamps(fd, k.baseAddress, t.baseAddress, 128) }
            }
            if r <= 0 { return }
            for i in 0..<Int(r) { body(keys[i], times[i]) }
            if r < 128 { return }
        }
    }

    /// Sets the socket's own `SO_PRIORITY` (for datagrams sent without a per-datagram priority).
    public func setPriority(_ p: UInt32) throws(KernelError) {
        try syscallRetrying("setsockopt(SO_PRIORITY)") { aip_udp_set_priority(fd, p) }
    }

    /// A datagram to send: `length` bytes at `offset` of the batch's buffer.
    public struct Outgoing: Sendable {
        public var offset: Int
        public var length: Int
        public var address: IPAddress
        public var port: UInt16
        /// SO_PRIORITY for this datagram (HTB classid `major:minor`), nil for the socket's.
        public var priority: UInt32?
        public init(offset: Int, length: Int, address: IPAddress, port: UInt16, priority: UInt32?) {
            self.offset = offset
            self.length = length
            self.address = address
            self.port = port
            self.priority = priority
        }
    }

    /// Sends `items` (payloads in `buffer`), at most `maxPerCall` (1...128) per `sendmmsg` call,
    /// calling `betweenCalls` between two calls. Returns how many went out; stops early when the
    /// socket buffer is full (`EAGAIN`). A datagram the kernel refuses (EPERM from a firewall, an
    /// unreachable destination) is skipped, not retried, and counted in `refused`. Throws on
    /// other errors, e.g. `EINVAL` when the kernel does not accept SO_PRIORITY as a control
    /// message (before Linux 6.14): then use one socket per priority with `setPriority`.
    /// `lastSent` lists the items that went out, in order.
    ///
    /// Why a cap: a kernel without preemption (`preempt=none`, as on the VM of the figures in
    /// docs/performance.md) switches threads only when a syscall returns, and one `sendmmsg`
    /// runs each datagram's whole path, through a local veth even the receiver's; 128 datagrams
    /// there are a millisecond or more that no other thread on that CPU gets.
    @discardableResult
    public func send(_ items: [Outgoing], buffer: [UInt8], maxPerCall: Int = 128,
                     betweenCalls: () -> Void = {}) throws(KernelError) -> Int {
        let perCall = max(1, min(128, maxPerCall))
        var sent = 0
        var attempted = 0
        lastSent.removeAll(keepingCapacity: true)
        lastAttempted = 0
        guard !items.isEmpty else { return 0 }
        var failure: KernelError?
        var out = outs
        outs = []
        defer { outs = out }
        buffer.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            while attempted < items.count {
                if attempted > 0 { betweenCalls() }
                let n = min(perCall, items.count - attempted)
                for j in 0..<n {
                    let it = items[attempted + j]
                    var o = aip_udp_out()
                    o.data = raw.baseAddress! + it.offset
                    o.len = UInt32(it.length)
                    o.port = it.port
                    o.family = it.address.family == .ipv6 ? 6 : 4
                    withUnsafeMutableBytes(of: &o.addr) { dst in
                        switch it.address {
                        case .v4(let a): dst.storeBytes(of: a.bigEndian, as: UInt32.self)
                        case .v6(let hi, let lo):
                            dst.storeBytes(of: hi.bigEndian, as: UInt64.self)
                            dst.storeBytes(of: lo.bigEndian, toByteOffset: 8, as: UInt64.self)
                        }
                    }
                    if let p = it.priority { o.has_priority = 1; o.priority = p }
                    out[j] = o
                }
                let r = out.withUnsafeBufferPointer { aip_udp_send_batch(fd, $0.baseAddress, UInt32(n)) }
                if r < 0 {
                    let e = errno
                    if e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS { return }
                    // A datagram refused on the way out (a local firewall drop: EPERM; an
                    // unreachable destination) is not retried: it counts as sent and lost, and the
                    // rest of the batch goes on.
                    if e == EPERM || e == ECONNREFUSED || e == EHOSTUNREACH || e == ENETUNREACH || e == EMSGSIZE {
                        refused += 1
                        attempted += 1
                        continue
                    }
                    failure = KernelError("sendmmsg", errno: e, detail: e == EINVAL ? "the kernel may not accept SO_PRIORITY as a control message (Linux < 6.14)" : "")
                    return
                }
                for k in 0..<Int(r) { lastSent.append(attempted + k) }
                attempted += Int(r)
                sent += Int(r)
                if Int(r) < n {
                    // The message after the last one sent failed; its error is lost (sendmmsg(2)).
                    // Skip it rather than send it twice.
                    attempted += 1
                    refused += 1
                }
            }
        }
        lastAttempted = attempted
        if let failure { throw failure }
        return sent
    }

    /// A received datagram's metadata (its bytes are passed alongside).
    public struct Received: Sendable {
        public var address: IPAddress
        public var port: UInt16
        /// Kernel receive time, ns since the epoch (CLOCK_REALTIME), or 0 if the kernel gave none.
        public var receiveNs: Int64
        /// TTL / hop limit, or -1.
        public var ttl: Int16
        public var truncated: Bool
    }

    /// Receives what is queued (up to `max` datagrams, without blocking) and passes each to
    /// `body`. Returns how many were received.
    @discardableResult
    public func receive(max: Int = 1024, _ body: (UnsafeRawBufferPointer, Received) -> Void) throws(KernelError) -> Int {
        let cap = 2048
        let batch = 128
        var total = 0
        while total < max {
            let want = min(batch, max - total)
            let r: Int32 = storage.withUnsafeMutableBytes { raw in
                for j in 0..<want {
                    ins[j] = aip_udp_in()
                    ins[j].data = raw.baseAddress! + j * cap
                    ins[j].cap = UInt32(cap)
                }
                return ins.withUnsafeMutableBufferPointer { aip_udp_recv_batch(fd, $0.baseAddress, UInt32(want)) }
            }
            if r < 0 {
                let e = errno
                // ICMP errors from earlier sends are reported once; keep reading.
                if e == ECONNREFUSED || e == EHOSTUNREACH || e == ENETUNREACH { continue }
                throw KernelError("recvmmsg", errno: e)
            }
            if r == 0 { break }
            storage.withUnsafeBytes { raw in
                for j in 0..<Int(r) {
                    let m = ins[j]
                    let addr: IPAddress = withUnsafeBytes(of: m.addr) { a in
                        m.family == 6
                            ? .v6(UInt64(bigEndian: a.loadUnaligned(as: UInt64.self)), UInt64(bigEndian: a.loadUnaligned(fromByteOffset: 8, as: UInt64.self)))
                            : .v4(UInt32(bigEndian: a.loadUnaligned(as: UInt32.self)))
                    }
                    let bytes = UnsafeRawBufferPointer(rebasing: raw[(j * cap)..<(j * cap + Int(m.len))])
                    body(bytes, Received(address: addr, port: m.port, receiveNs: m.rx_ns, ttl: m.ttl, truncated: m.truncated != 0))
                }
            }
            total += Int(r)
            if Int(r) < want { break }
        }
        return total
    }
}
