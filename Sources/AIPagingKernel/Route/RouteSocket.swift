#if canImport(Glibc)
import Glibc
#endif
import CNetlinkRoute
import CAIPagingShim
import Synchronization

/// An rtnetlink (NETLINK_ROUTE) socket bound for its whole life to one network namespace.
///
/// The socket is a libnl `nl_sock` owned by this object and freed (closed) in its deinit. Messages
/// are built with libnl (`rtnl_class_build_add_request`, `nlmsg_alloc_simple`, ...); requests are
/// serialized by an internal lock, so one socket can be shared by concurrent tasks.
/// Kernel state touched: none by itself (the socket joins no multicast group).
public final class RouteSocket: Sendable {
    /// The namespace the socket was opened in.
    public let namespace: NetworkNamespace
    /// Netlink port id the kernel assigned to the socket (`nl_pid`). tc notifications caused by
    /// this socket's requests carry it as `nlmsg_pid`, which is how `KernelChangeMonitor` tells
    /// the agent's own changes from everyone else's.
    public let portID: UInt32
    let core: Mutex<LibnlSocket>

    /// Opens the socket inside `namespace` (`withNetworkNamespace`), turns on extended ACKs
    /// (the kernel's error text ends up in `KernelError.detail`), capped ACKs and strict dump
    /// checking, and raises the socket buffers to 4 MiB so batches of ACKs cannot overrun them.
    public init(namespace: NetworkNamespace = .current) throws(KernelError) {
        self.namespace = namespace
        let fd = try openNetlinkSocket(netlinkProtocol: NETLINK_ROUTE, in: namespace, name: "NETLINK_ROUTE")
        portID = netlinkPortID(fd: fd)
        core = Mutex(try LibnlSocket(adopting: fd))
    }

    /// Runs `body` with exclusive use of the socket.
    func withSocket<T: Sendable>(_ body: (LibnlSocket) throws(KernelError) -> T) throws(KernelError) -> T {
        try core.withLock { (s: inout LibnlSocket) throws(KernelError) -> T in try body(s) }
    }
}

/// Opens `socket(AF_NETLINK, SOCK_RAW|SOCK_CLOEXEC, protocol)` on a thread inside `namespace`,
/// binds it (kernel-assigned port id) and sets the options every agent socket uses.
func openNetlinkSocket(netlinkProtocol: Int32, in namespace: NetworkNamespace, name: String,
                       receiveBufferBytes: Int32 = 4 << 20) throws(KernelError) -> Int32 {
    let fd: Int32
    do {
        fd = try withNetworkNamespace(namespace) { () throws -> Int32 in
            let fd = try syscallRetrying("socket(AF_NETLINK, \(name))") {
                aip_netlink_socket(netlinkProtocol)
            }
            var addr = sockaddr_nl()
            addr.nl_family = sa_family_t(AF_NETLINK)
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, socklen_t(MemoryLayout<sockaddr_nl>.size))
                }
            }
            if rc != 0 {
                let err = errno
                close(fd)
                throw KernelError("bind(\(name))", errno: err)
            }
            return fd
        }
    } catch let error as KernelError {
        throw error
    } catch {
        throw KernelError("withNetworkNamespace", errno: EIO, detail: "\(error)")
    }
    func setInt(_ level: Int32, _ option: Int32, _ value: Int32) -> Int32 {
        var v = value
        return setsockopt(fd, level, option, &v, socklen_t(MemoryLayout<Int32>.size))
    }
    _ = setInt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
    _ = setInt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    _ = setInt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
    let bufferSize: Int32 = 4 << 20
    if setInt(SOL_SOCKET, SO_RCVBUFFORCE, receiveBufferBytes) != 0 { _ = setInt(SOL_SOCKET, SO_RCVBUF, receiveBufferBytes) }
    if setInt(SOL_SOCKET, SO_SNDBUFFORCE, bufferSize) != 0 { _ = setInt(SOL_SOCKET, SO_SNDBUF, bufferSize) }
    // A lost reply must not hang the agent forever.
    var timeout = timeval(tv_sec: 30, tv_usec: 0)
    _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    return fd
}

/// The port id the kernel bound a netlink socket to (`getsockname`), 0 if it cannot tell.
func netlinkPortID(fd: Int32) -> UInt32 {
    var addr = sockaddr_nl()
    var len = socklen_t(MemoryLayout<sockaddr_nl>.size)
    let rc = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    return rc == 0 ? addr.nl_pid : 0
}

/// Owner of one libnl `nl_sock` and its receive buffer. Lives inside `RouteSocket`'s mutex and
/// never leaves it; deinit frees the socket (which closes the fd) and the buffer.
final class LibnlSocket {
    private let sock: OpaquePointer
    let fd: Int32
    private let buffer: UnsafeMutableRawBufferPointer
    static let bufferSize = 1 << 16
    /// Requests per sendmsg() in `transact`; their ACKs (~100 B of payload, ~1 KiB of truesize
    /// each) stay far below the 4 MiB receive buffer.
    static let maxBatchMessages = 256
    static let maxBatchBytes = 1 << 20

    init(adopting fd: Int32) throws(KernelError) {
        guard let sock = nl_socket_alloc() else {
            close(fd)
            throw KernelError("nl_socket_alloc", errno: ENOMEM)
        }
        let rc = nl_socket_set_fd(sock, NETLINK_ROUTE, fd)
        if rc < 0 {
            nl_socket_free(sock)
            close(fd)
            throw KernelError("nl_socket_set_fd", errno: EINVAL,
                              detail: String(cString: nl_geterror(rc)))
        }
        self.sock = sock
        self.fd = fd
        buffer = .allocate(byteCount: Self.bufferSize, alignment: 8)
    }

    deinit {
        nl_socket_free(sock)  // closes fd
        buffer.deallocate()
    }

    /// Assigns port id and sequence number (libnl `nl_complete_msg`) and sets REQUEST|ACK.
    private func complete(_ message: NLMessage) -> UnsafeMutablePointer<nlmsghdr> {
        nl_complete_msg(sock, message.raw)
        let header = nlmsg_hdr(message.raw)!
        header.pointee.nlmsg_flags |= UInt16(NLM_F_REQUEST | NLM_F_ACK)
        return header
    }

    /// The outcome of one request in a batch: errno 0 is success.
    struct Ack {
        var errno: Int32
        var message: String?
    }

    /// Sends `messages` back to back in as few sendmsg() calls as fit `maxBatchMessages` /
    /// `maxBatchBytes`, then reads one ACK per message. rtnetlink handles each message on its own
    /// (a failure does not stop the following ones), so the result has one entry per message.
    func transact(_ messages: [NLMessage], operation: String) throws(KernelError) -> [Ack] {
        var results = [(errno: Int32, message: String?)?](repeating: nil, count: messages.count)
        var start = 0
        while start < messages.count {
            var bytes: [UInt8] = []
            bytes.reserveCapacity(min(Self.maxBatchBytes, messages.count * 2400))
            var seqToIndex: [UInt32: Int] = [:]
            var end = start
            while end < messages.count, end - start < Self.maxBatchMessages {
                let header = complete(messages[end])
                let len = Int(header.pointee.nlmsg_len)
                if end > start, bytes.count + len > Self.maxBatchBytes { break }
                bytes.append(contentsOf: UnsafeRawBufferPointer(start: header, count: len))
                bytes.append(contentsOf: repeatElement(0, count: NetlinkWire.align(len) - len))
                seqToIndex[header.pointee.nlmsg_seq] = end
                end += 1
            }
            try sendAll(bytes, operation: operation)
            try NetlinkIO.collectAcks(fd: fd, buffer: buffer, operation: operation, seqToIndex: seqToIndex, into: &results)
            start = end
        }
        return results.map { Ack(errno: $0!.errno, message: $0!.message) }
    }

    /// Sends one request and hands every reply message with its sequence number to `onReply`
    /// until the ACK (plain request) or NLMSG_DONE (dump, `NLM_F_DUMP` set by the caller).
    /// An NLMSG_ERROR with a non-zero errno is thrown with `doing` and `hint` in its detail.
    func request(
        _ message: NLMessage, operation: String, doing: String, hint: (Int32) -> String? = { _ in nil },
        onReply: (NetlinkWire.Message) throws(KernelError) -> Void
    ) throws(KernelError) {
        let header = complete(message)
        let seq = header.pointee.nlmsg_seq
        let isDump = header.pointee.nlmsg_flags & UInt16(NLM_F_DUMP) == UInt16(NLM_F_DUMP)
        if isDump { header.pointee.nlmsg_flags &= ~UInt16(NLM_F_ACK) }
        try sendAll(Array(UnsafeRawBufferPointer(start: header, count: Int(header.pointee.nlmsg_len))),
                    operation: operation)
        var done = false
        while !done {
            try receive(operation: operation) { (m: NetlinkWire.Message) throws(KernelError) in
                guard m.sequence == seq, !done else { return }
                switch Int32(m.type) {
                case NLMSG_ERROR:
                    let (err, text) = NetlinkWire.decodeError(m)
                    if err != 0 {
                        throw KernelError(operation, errno: err, doing: doing, kernelMessage: text, hint: hint(err))
                    }
                    done = true
                case NLMSG_DONE:
                    if m.payload.count >= 4 {
                        let status = m.payload.loadUnaligned(as: Int32.self)
                        if status < 0 {
                            throw KernelError(operation, errno: -status, doing: doing, kernelMessage: nil, hint: hint(-status))
                        }
                    }
                    done = true
                case NLMSG_NOOP, NLMSG_OVERRUN:
                    return
                default:
                    try onReply(m)
                    if !isDump { return }
                }
            }
        }
    }

    private func sendAll(_ bytes: [UInt8], operation: String) throws(KernelError) {
        try NetlinkIO.send(fd: fd, bytes, operation: operation)
    }

    private func receive(operation: String, _ body: (NetlinkWire.Message) throws(KernelError) -> Void) throws(KernelError) {
        try NetlinkIO.receive(fd: fd, into: buffer, operation: operation, body)
    }
}

/// Owner of one libnl `nl_msg`; deinit frees it.
final class NLMessage {
    let raw: OpaquePointer
    init(adopting raw: OpaquePointer) { self.raw = raw }
    deinit { nlmsg_free(raw) }

    /// `nlmsg_alloc_simple(type, flags)`.
    init(type: Int32, flags: Int32) throws(KernelError) {
        guard let m = nlmsg_alloc_simple(type, flags) else { throw KernelError("nlmsg_alloc_simple", errno: ENOMEM) }
        raw = m
    }

    /// Appends a fixed header (`struct tcmsg`, `struct rtmsg`, ...) right after the nlmsghdr.
    func appendHeader<T: BitwiseCopyable>(_ value: T) throws(KernelError) {
        var v = value
        let rc = withUnsafeMutableBytes(of: &v) { nlmsg_append(raw, $0.baseAddress, $0.count, Int32(NLMSG_ALIGNTO)) }
        if rc < 0 { throw KernelError("nlmsg_append", errno: EMSGSIZE) }
    }

    func put(_ type: Int32, bytes: [UInt8]) throws(KernelError) {
        let rc = bytes.withUnsafeBytes { nla_put(raw, type, Int32($0.count), $0.baseAddress) }
        if rc < 0 { throw KernelError("nla_put", errno: EMSGSIZE) }
    }
    func put(_ type: Int32, u32: UInt32) throws(KernelError) {
        if nla_put_u32(raw, type, u32) < 0 { throw KernelError("nla_put_u32", errno: EMSGSIZE) }
    }
    func put(_ type: Int32, string: String) throws(KernelError) {
        if nla_put_string(raw, type, string) < 0 { throw KernelError("nla_put_string", errno: EMSGSIZE) }
    }
    /// `nla_nest_start` … `nla_nest_end` around `body`.
    func nest(_ type: Int32, _ body: () throws(KernelError) -> Void) throws(KernelError) {
        guard let start = nla_nest_start(raw, type) else { throw KernelError("nla_nest_start", errno: EMSGSIZE) }
        try body()
        nla_nest_end(raw, start)
    }
}
