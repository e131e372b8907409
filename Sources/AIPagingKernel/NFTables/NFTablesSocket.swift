#if canImport(Glibc)
import Glibc
#endif
import CNFTables
import CAIPagingShim

private let SOL_NETLINK_LEVEL: Int32 = 270  // SOL_NETLINK (linux/socket.h), not exported by Glibc

/// An `AF_NETLINK`/`NETLINK_NETFILTER` socket for nftables, opened in one network namespace;
/// the single owner of its `mnl_socket` (closed in `deinit`).
///
/// Kernel state it touches: whatever the transactions it commits say; the read functions
/// (`listTables`, `listChains`, `listSets`, `listRules`, element listings) only dump.
///
/// Thread safety: not `Sendable`. It keeps a sequence counter, socket-buffer sizes and one
/// receive buffer, and netlink replies are matched to requests by reading them in order, so
/// every call must come from one isolation domain at a time. The agent keeps it inside the
/// actor that owns the enforcement namespace. Once opened, the socket stays bound to its
/// namespace whatever thread uses it.
public final class NFTablesSocket {
    /// Where the socket was opened.
    public let namespace: NetworkNamespace
    /// Netlink port id the kernel assigned (`nl_pid`).
    public let portID: UInt32

    private let nl: OpaquePointer
    private let fd: Int32
    private var sequence: UInt32
    /// Current `SO_SNDBUF` / `SO_RCVBUF` as the kernel reports them (already doubled).
    private var sendBufferBytes: Int = 0
    private var receiveBufferBytes: Int = 0
    private let receiveBuffer: UnsafeMutableRawPointer
    /// Element dumps repeated because a hash resize reordered the set mid-dump (see
    /// `listRawElements`). For tests and diagnostics.
    var reorderedDumpRetries = 0
    /// Set while a request's replies are being read; still set on the next call if that reading
    /// was abandoned by a throw, so the leftovers get discarded first.
    private var repliesMayBePending = false
    /// Netlink dumps fill at most 32 KiB per datagram (`netlink_recvmsg` caps
    /// `max_recvmsg_len`); twice that leaves room for any reply.
    private static let receiveBufferSize = 64 * 1024

    /// Default cap on one kernel transaction's encoded size, batch framing included.
    public static let defaultMaxTransactionBytes = 32 << 20
    /// Hard limit for `maxTransactionBytes`: `SO_SNDBUF` is an int the kernel doubles.
    public static let maxTransactionBytesLimit = 512 << 20

    /// Opens the socket inside `namespace` (on a short-lived thread that joins it, see
    /// `withNetworkNamespace`), binds it, and enables `NETLINK_CAP_ACK` (errors do not echo the
    /// request) and `NETLINK_EXT_ACK` (the kernel's error strings and attribute offsets).
    public init(namespace: NetworkNamespace = .current) throws(KernelError) {
        self.namespace = namespace
        let fd: Int32
        do {
            fd = try withNetworkNamespace(namespace) { () throws(KernelError) -> Int32 in
                try syscallRetrying("socket(AF_NETLINK, NETLINK_NETFILTER)") {
                    aip_netlink_socket(NETLINK_NETFILTER)
                }
            }
        } catch let e as KernelError {
            throw e
        } catch {
            throw KernelError("socket", errno: EINVAL, detail: "\(error)")
        }
        guard let nl = mnl_socket_fdopen(fd) else {
            let err = errno
            close(fd)
            throw KernelError("mnl_socket_fdopen", errno: err)
        }
        if mnl_socket_bind(nl, 0, pid_t(MNL_SOCKET_AUTOPID)) < 0 {
            let err = errno
            mnl_socket_close(nl)
            throw KernelError("bind(AF_NETLINK)", errno: err)
        }
        self.nl = nl
        self.fd = fd
        portID = mnl_socket_get_portid(nl)
        guard let rb = malloc(NFTablesSocket.receiveBufferSize) else { fatalError("out of memory") }
        receiveBuffer = rb
        sequence = UInt32(truncatingIfNeeded: time(nil))
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_NETLINK_LEVEL, NETLINK_CAP_ACK, &one, socklen_t(MemoryLayout<Int32>.size))
        _ = setsockopt(fd, SOL_NETLINK_LEVEL, NETLINK_EXT_ACK, &one, socklen_t(MemoryLayout<Int32>.size))
        // A watchdog for dumps only (commits never block): a dump reply that does not come in
        // 10 s means the kernel or this code is broken, not that it is slow.
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        sendBufferBytes = socketOption(SO_SNDBUF)
        receiveBufferBytes = socketOption(SO_RCVBUF)
    }

    deinit {
        mnl_socket_close(nl)
        free(receiveBuffer)
    }

    private func nextSequence() -> UInt32 {
        sequence &+= 1
        return sequence
    }

    // MARK: socket buffers

    private func socketOption(_ name: Int32) -> Int {
        var v: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        _ = getsockopt(fd, SOL_SOCKET, name, &v, &len)
        return Int(v)
    }

    /// Grows `SO_SNDBUF` (or `SO_RCVBUF`) so the kernel accepts/queues `bytes`. Uses the
    /// `*FORCE` variant (CAP_NET_ADMIN, ignores `net.core.[wr]mem_max`) and falls back to the
    /// plain one. The kernel stores twice the requested value.
    private func growBuffer(send: Bool, to bytes: Int) throws(KernelError) {
        let current = send ? sendBufferBytes : receiveBufferBytes
        if current >= bytes { return }
        var request = Int32(clamping: min(bytes / 2 + 4096, Int(Int32.max / 2)))
        let force = send ? SO_SNDBUFFORCE : SO_RCVBUFFORCE
        let plain = send ? SO_SNDBUF : SO_RCVBUF
        if setsockopt(fd, SOL_SOCKET, force, &request, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            _ = setsockopt(fd, SOL_SOCKET, plain, &request, socklen_t(MemoryLayout<Int32>.size))
        }
        let now = socketOption(plain)
        if send { sendBufferBytes = now } else { receiveBufferBytes = now }
        if now < bytes {
            throw KernelError(send ? "setsockopt(SO_SNDBUFFORCE)" : "setsockopt(SO_RCVBUFFORCE)", errno: ENOBUFS,
                detail: "socket buffer is \(now) bytes, \(bytes) needed; needs CAP_NET_ADMIN or a larger net.core.\(send ? "wmem" : "rmem")_max")
        }
    }

    /// Sets `SO_RCVBUF` (plain, so at most `net.core.rmem_max`): tests use a small buffer to make
    /// replies overflow it.
    func setReceiveBufferForTesting(_ bytes: Int) {
        var v = Int32(bytes)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, socklen_t(MemoryLayout<Int32>.size))
        receiveBufferBytes = socketOption(SO_RCVBUF)
    }

    /// Throws away replies left in the receive queue by a call that threw half-way (a dump or a
    /// commit abandoned on an error). Costs nothing in the normal case.
    private func drainStaleReplies() {
        guard repliesMayBePending else { return }
        while recv(fd, receiveBuffer, NFTablesSocket.receiveBufferSize, Int32(MSG_DONTWAIT)) > 0 {}
        repliesMayBePending = false
    }

    // MARK: commit

    /// Sends `transaction` to the kernel as one or more nftables batches and reports the outcome.
    ///
    /// Each kernel transaction is `NFNL_MSG_BATCH_BEGIN`, the messages, `NFNL_MSG_BATCH_END`, sent
    /// in ONE `sendmsg` (iovec: begin, slice of the transaction's buffer, end), so the kernel sees
    /// it in one skb and applies all of it or none of it. nfnetlink processes the batch inside
    /// `sendmsg` and queues every reply before it returns, in message order; this method then
    /// reads them without blocking. `BATCH_END` always carries `NLM_F_ACK`: kernels that honour it
    /// (6.10+; this one does) ack it only after a successful commit, as the last reply, so that
    /// ACK is positive proof of the commit and ends the reading. A failed batch gets one error
    /// per failing message and no `BATCH_END` ACK. On kernels that ignore the flag, "no error
    /// queued" means committed, which is what nft(8) relies on.
    /// - `.errorsOnly` (default): no other `NLM_F_ACK`; a successful transaction costs one reply.
    ///   If replies overflow the receive buffer (ENOBUFS), at least two were queued, so at least
    ///   one message failed and the batch was aborted: the outcome stays certain.
    /// - `.perMessage`: `NLM_F_ACK` on every message; one reply per message. Note that the
    ///   kernel also acks (error 0) the good messages of an aborted batch.
    ///
    /// If the encoded size exceeds `maxTransactionBytes`, the operations are split (between
    /// messages) into consecutive transactions, each atomic; `NFTCommitResult.transactions`
    /// says so. With `allowSplit: false` such a transaction fails with EMSGSIZE and nothing is
    /// sent. A failure stops at the failing transaction (see `NFTTransactionError`).
    @discardableResult
    public func commit(
        _ transaction: NFTTransaction,
        ackMode: NFTAckMode = .errorsOnly,
        maxTransactionBytes: Int = NFTablesSocket.defaultMaxTransactionBytes,
        allowSplit: Bool = true
    ) throws(NFTTransactionError) -> NFTCommitResult {
        precondition(maxTransactionBytes > 0 && maxTransactionBytes <= NFTablesSocket.maxTransactionBytesLimit,
                     "maxTransactionBytes out of range")
        let ops = transaction.operations
        if ops.isEmpty { return NFTCommitResult(operations: 0, transactions: 0, bytes: 0, endAcknowledged: true) }

        func fail(_ e: KernelError, committed: Int = 0, total: Int = 1) -> NFTTransactionError {
            NFTTransactionError(failures: [e], committedTransactions: committed, totalTransactions: total, repliesLost: false)
        }

        // Split between messages so that framing + messages <= cap.
        let framing = 2 * Int(NLMSG_HDRLEN_VALUE + 4)
        var chunks: [Range<Int>] = []
        var start = 0, size = framing
        for (i, op) in ops.enumerated() {
            if op.length + framing > maxTransactionBytes {
                throw fail(KernelError(op.description, errno: EMSGSIZE,
                    detail: "one message of \(op.length) bytes exceeds maxTransactionBytes \(maxTransactionBytes)"))
            }
            if size + op.length > maxTransactionBytes {
                chunks.append(start..<i)
                start = i
                size = framing
            }
            size += op.length
        }
        chunks.append(start..<ops.count)
        if chunks.count > 1 && !allowSplit {
            throw fail(KernelError("NFNL_MSG_BATCH", errno: EMSGSIZE,
                detail: "transaction of \(transaction.encodedBytes) bytes exceeds maxTransactionBytes \(maxTransactionBytes) and allowSplit is false; nothing was sent"))
        }

        var result = NFTCommitResult(operations: ops.count, transactions: chunks.count, bytes: 0, endAcknowledged: true)
        for (index, range) in chunks.enumerated() {
            do {
                let (bytes, endAcked) = try commitOne(transaction, range: range, ackMode: ackMode)
                result.bytes += bytes
                result.endAcknowledged = result.endAcknowledged && endAcked
            } catch var e {
                e.committedTransactions = index
                e.totalTransactions = chunks.count
                throw e
            }
        }
        return result
    }

    /// One kernel transaction: operations `range` of `tx`.
    private func commitOne(_ tx: NFTTransaction, range: Range<Int>, ackMode: NFTAckMode)
        throws(NFTTransactionError) -> (bytes: Int, endAcked: Bool) {
        let ops = tx.operations
        let buffer = tx.buffer
        func fail(_ e: KernelError) -> NFTTransactionError {
            NFTTransactionError(failures: [e], committedTransactions: 0, totalTransactions: 1, repliesLost: false)
        }

        // Sequence numbers: begin, one per message, end.
        let beginSeq = nextSequence()
        let firstSeq = beginSeq &+ 1
        for i in range {
            let op = ops[i]
            buffer.setSequence(nextSequence(), at: op.offset)
            if ackMode == .perMessage { buffer.addFlags(UInt16(NLM_F_ACK), at: op.offset) }
            else { buffer.removeFlags(UInt16(NLM_F_ACK), at: op.offset) }
        }
        let endSeq = nextSequence()

        // Batch framing in two small local buffers.
        var begin = [UInt8](repeating: 0, count: 64)
        var end = [UInt8](repeating: 0, count: 64)
        let beginLen = begin.withUnsafeMutableBytes { raw -> Int in
            let nlh = nftnl_batch_begin(raw.baseAddress!.assumingMemoryBound(to: CChar.self), beginSeq)!
            return Int(nlh.pointee.nlmsg_len)
        }
        let endLen = end.withUnsafeMutableBytes { raw -> Int in
            let nlh = nftnl_batch_end(raw.baseAddress!.assumingMemoryBound(to: CChar.self), endSeq)!
            nlh.pointee.nlmsg_flags |= UInt16(NLM_F_ACK)
            return Int(nlh.pointee.nlmsg_len)
        }
        let sliceStart = ops[range.lowerBound].offset
        let sliceEnd = ops[range.upperBound - 1].offset + ops[range.upperBound - 1].length
        let total = beginLen + (sliceEnd - sliceStart) + endLen

        do {
            // netlink_sendmsg refuses (EMSGSIZE) a message longer than sk_sndbuf - 32.
            try growBuffer(send: true, to: total + 4096)
            // An ACK skb costs ~1 KiB of receive buffer (truesize), not its 36 bytes. Per-message
            // ACKs need room for all of them; errors-only needs one reply, so growing the receive
            // buffer there (to keep many errors readable) is best effort.
            if ackMode == .perMessage {
                try growBuffer(send: false, to: (range.count + 1) * 1280 + (256 << 10))
            } else {
                try? growBuffer(send: false, to: 1 << 20)
            }
        } catch {
            throw fail(error)
        }
        drainStaleReplies()
        repliesMayBePending = true

        // One sendmsg: the kernel needs the whole batch in one skb.
        let sent: Int = begin.withUnsafeMutableBytes { b in
            end.withUnsafeMutableBytes { e in
                var iov = [
                    iovec(iov_base: b.baseAddress, iov_len: beginLen),
                    iovec(iov_base: buffer.base + sliceStart, iov_len: sliceEnd - sliceStart),
                    iovec(iov_base: e.baseAddress, iov_len: endLen),
                ]
                var addr = sockaddr_nl()
                addr.nl_family = sa_family_t(AF_NETLINK)
                return withUnsafeMutablePointer(to: &addr) { ap in
                    iov.withUnsafeMutableBufferPointer { iovp in
                        var msg = msghdr()
                        msg.msg_name = UnsafeMutableRawPointer(ap)
                        msg.msg_namelen = socklen_t(MemoryLayout<sockaddr_nl>.size)
                        msg.msg_iov = iovp.baseAddress
                        msg.msg_iovlen = iovp.count
                        while true {
                            let n = sendmsg(fd, &msg, 0)
                            if n < 0 && errno == EINTR { continue }
                            return n
                        }
                    }
                }
            }
        }
        if sent < 0 {
            let err = errno
            throw fail(KernelError("sendmsg(nftables batch)", errno: err,
                detail: "\(range.count) messages, \(total) bytes; nothing was applied"))
        }
        precondition(sent == total, "netlink sendmsg sent \(sent) of \(total) bytes")

        // Drain the replies (all queued during sendmsg, in message order). The kernel acks
        // BATCH_END only after a successful commit and queues nothing after it, so that ACK
        // ends the reading; otherwise read until the queue is empty.
        var failures: [(Int, KernelError)] = []
        var endAcked = false
        var repliesLost = false
        while !endAcked {
            let n = recv(fd, receiveBuffer, NFTablesSocket.receiveBufferSize, Int32(MSG_DONTWAIT | MSG_TRUNC))
            if n < 0 {
                let err = errno
                if err == EINTR { continue }
                if err == EAGAIN || err == EWOULDBLOCK { break }
                if err == ENOBUFS { repliesLost = true; continue }
                throw fail(KernelError("recv(nftables replies)", errno: err))
            }
            if n == 0 { break }
            if n > NFTablesSocket.receiveBufferSize { repliesLost = true }  // truncated; parse what fits
            forEachMessage(in: min(n, NFTablesSocket.receiveBufferSize)) { nlh, len in
                guard nlh.pointee.nlmsg_type == UInt16(NLMSG_ERROR) else { return }
                var info = aip_nft_error_info()
                guard aip_nft_parse_error(nlh, len, &info) == 0 else { return }
                let seq = info.request_seq
                if info.error == 0 {
                    if seq == endSeq { endAcked = true }
                    return
                }
                let errnum = -info.error
                var hint = info.extack_msg.map { "kernel says: \(String(cString: $0))" } ?? ""
                let index = Int(seq &- firstSeq)
                if seq == beginSeq || seq == endSeq {
                    if hint.isEmpty { hint = "the kernel rejected or could not commit the batch; nothing was applied" }
                    failures.append((seq == beginSeq ? -1 : range.count,
                                     KernelError(seq == beginSeq ? "NFNL_MSG_BATCH_BEGIN" : "NFNL_MSG_BATCH_END", errno: errnum, detail: hint)))
                } else if index >= 0 && index < range.count {
                    let op = ops[range.lowerBound + index]
                    failures.append((index, KernelError(op.description, errno: errnum,
                        detail: [hint, NFTablesSocket.hint(for: errnum, op: op)].filter { !$0.isEmpty }.joined(separator: "; "))))
                }
                // Any other sequence number answers an earlier, abandoned request: ignore it.
            }
        }
        repliesMayBePending = false
        if failures.isEmpty && repliesLost && !endAcked {
            failures.append((range.count, KernelError("NFNL_MSG_BATCH_END", errno: ENOBUFS,
                detail: ackMode == .perMessage
                    ? "replies were lost; the outcome is unknown, read the state back"
                    : "replies were lost, so more than one was queued: the batch had errors and was aborted")))
        }
        if !failures.isEmpty {
            throw NFTTransactionError(failures: failures.sorted { $0.0 < $1.0 }.map(\.1),
                                      committedTransactions: 0, totalTransactions: 1, repliesLost: repliesLost)
        }
        return (total, endAcked)
    }

    /// What an errno usually means for an nftables message.
    static func hint(for errnum: Int32, op: NFTOperation) -> String {
        let type = UInt32(op.type)
        switch errnum {
        case EEXIST where type == NFT_MSG_NEWSETELEM.rawValue:
            return "the element already exists (add is exclusive; renew with delete + add)"
        case EEXIST:
            return "the object already exists"
        case ENOENT where type == NFT_MSG_DELSETELEM.rawValue:
            return "no such element (expired or never added)"
        case ENOENT:
            return "the table, chain or set it refers to does not exist"
        case EPERM:
            return "needs CAP_NET_ADMIN in the namespace, or the table is owned by another process"
        case EOPNOTSUPP:
            return "the kernel lacks a feature this message uses"
        case EINVAL, ERANGE:
            return "the kernel rejected an attribute (bad key/data length or timeout)"
        default:
            return ""
        }
    }

    // MARK: dumps

    /// Iterates the netlink messages in the first `count` bytes of the receive buffer.
    private func forEachMessage<E: Error>(in count: Int, _ body: (UnsafeMutablePointer<nlmsghdr>, Int) throws(E) -> Void) throws(E) {
        var remaining = Int32(count)
        var nlh = receiveBuffer.assumingMemoryBound(to: nlmsghdr.self)
        while mnl_nlmsg_ok(nlh, remaining) {
            let len = Int(nlh.pointee.nlmsg_len)
            try body(nlh, len)
            nlh = mnl_nlmsg_next(nlh, &remaining)
        }
    }

    /// Sends one `NLM_F_DUMP` request and hands every reply message to `onMessage`.
    /// A dump that the kernel marks inconsistent (`NLM_F_DUMP_INTR`: the ruleset changed
    /// meanwhile) is restarted, after `onStart` resets what the caller collected.
    func dump(
        type: UInt16, family: UInt8, what: String,
        onStart: () -> Void = {},
        payload: (UnsafeMutablePointer<nlmsghdr>) -> Void,
        onMessage: (UnsafePointer<nlmsghdr>) throws(KernelError) -> Void
    ) throws(KernelError) {
        let opName = NFTablesSocket.getName(type)
        var request = [UInt8](repeating: 0, count: 4096)
        for _ in 0..<5 {
            onStart()
            drainStaleReplies()
            repliesMayBePending = true
            let seq = nextSequence()
            let len: Int = request.withUnsafeMutableBytes { raw in
                let nlh = nftnl_nlmsg_build_hdr(raw.baseAddress!.assumingMemoryBound(to: CChar.self), type,
                                                UInt16(family), UInt16(NLM_F_DUMP), seq)!
                payload(nlh)
                precondition(Int(nlh.pointee.nlmsg_len) <= 4096)
                return Int(nlh.pointee.nlmsg_len)
            }
            let sent = request.withUnsafeBytes { mnl_socket_sendto(nl, $0.baseAddress, len) }
            if sent < 0 { throw KernelError(opName, errno: errno, detail: "sending the dump request for \(what)") }

            var interrupted = false
            var done = false
            while !done {
                let n = recv(fd, receiveBuffer, NFTablesSocket.receiveBufferSize, Int32(MSG_TRUNC))
                if n < 0 {
                    let err = errno
                    if err == EINTR { continue }
                    throw KernelError(opName, errno: err, detail: err == EAGAIN
                        ? "no dump reply for \(what) within 10 s" : "reading the dump of \(what)")
                }
                if n > NFTablesSocket.receiveBufferSize {
                    throw KernelError(opName, errno: EMSGSIZE, detail: "dump datagram of \(n) bytes truncated")
                }
                try forEachMessage(in: n) { (nlh, len) throws(KernelError) in
                    guard nlh.pointee.nlmsg_seq == seq, !done else { return }
                    if nlh.pointee.nlmsg_flags & UInt16(NLM_F_DUMP_INTR) != 0 { interrupted = true }
                    switch Int32(nlh.pointee.nlmsg_type) {
                    case NLMSG_DONE:
                        done = true
                    case NLMSG_ERROR:
                        var info = aip_nft_error_info()
                        if aip_nft_parse_error(nlh, len, &info) == 0 && info.error != 0 {
                            let hint = info.extack_msg.map { "; kernel says: \(String(cString: $0))" } ?? ""
                            throw KernelError(opName, errno: -info.error,
                                detail: "dumping \(what)" + (info.error == -ENOENT ? ": the table or set does not exist" : "") + hint)
                        }
                        done = true
                    case NLMSG_NOOP, NLMSG_OVERRUN:
                        break
                    default:
                        try onMessage(UnsafePointer(nlh))
                    }
                }
            }
            repliesMayBePending = false
            if !interrupted { return }
        }
        throw KernelError(opName, errno: EINTR, detail: "the ruleset kept changing while dumping \(what) (5 attempts)")
    }

    /// Reads chosen elements of a set by key: `NFT_MSG_GETSETELEM` without `NLM_F_DUMP`, up to
    /// `perRequest` keys a request, each answered by its own message. The cost is linear in the
    /// keys asked for, where a dump of the whole set costs time quadratic in the set's size (the
    /// kernel restarts its hash-table walk for every 32 KiB chunk). `keys` holds the keys back to
    /// back, `keyLength` bytes each. A key with no element is skipped (the kernel stops a request
    /// at it; the rest are asked again); returns how many were missing. Replies that overflow the
    /// receive buffer (`ENOBUFS`) make the requests smaller. More than half of them
    /// missing means the set or the keys are wrong: an error.
    func getElements(table: String, set: String, family: UInt8, keys: [UInt8], keyLength: Int, perRequest first: Int = 64,
                     _ body: (OpaquePointer) -> Void) throws(KernelError) -> Int {
        precondition(keyLength > 0 && keys.count % keyLength == 0 && first > 0)
        var perRequest = first
        let opName = NFTablesSocket.getName(UInt16(NFT_MSG_GETSETELEM.rawValue))
        let total = keys.count / keyLength
        var next = 0
        var missing = 0
        var request = [UInt8](repeating: 0, count: 512 + perRequest * (keyLength + 32))
        drainStaleReplies()
        while next < total {
            let end = min(total, next + perRequest)
            let ask = NftnlSet()
            nftnl_set_set_str(ask.raw, UInt16(NFTNL_SET_TABLE.rawValue), table)
            nftnl_set_set_str(ask.raw, UInt16(NFTNL_SET_NAME.rawValue), set)
            keys.withUnsafeBytes { raw in
                for i in next..<end {
                    let e = NftnlSetElem()
                    nftnl_set_elem_set(e.raw!, UInt16(NFTNL_SET_ELEM_KEY), raw.baseAddress! + i * keyLength, UInt32(keyLength))
                    nftnl_set_elem_add(ask.raw, e.release())
                }
            }
            repliesMayBePending = true
            let seq = nextSequence()
            let capacity = request.count
            let len: Int = request.withUnsafeMutableBytes { raw in
                let nlh = nftnl_nlmsg_build_hdr(raw.baseAddress!.assumingMemoryBound(to: CChar.self), UInt16(NFT_MSG_GETSETELEM.rawValue),
                                                UInt16(family), UInt16(NLM_F_ACK), seq)!
                nftnl_set_elems_nlmsg_build_payload(nlh, ask.raw)
                precondition(Int(nlh.pointee.nlmsg_len) <= capacity)
                return Int(nlh.pointee.nlmsg_len)
            }
            let sent = request.withUnsafeBytes { mnl_socket_sendto(nl, $0.baseAddress, len) }
            if sent < 0 { throw KernelError(opName, errno: errno, detail: "sending a request for elements of \(table) \(set)") }
            var answered = 0
            var status: Int32? = nil
            // After an overrun (ENOBUFS from recv: replies, maybe the ACK, were dropped) what is
            // queued is read without waiting; the replies read are a prefix of the keys asked
            // (the kernel stops at the first reply it cannot queue).
            var overrun = false
            while status == nil {
                let n = recv(fd, receiveBuffer, NFTablesSocket.receiveBufferSize, Int32(MSG_TRUNC) | (overrun ? Int32(MSG_DONTWAIT) : 0))
                if n < 0 {
                    let err = errno
                    if err == EINTR { continue }
                    if err == ENOBUFS { overrun = true; continue }
                    if err == EAGAIN && overrun { status = -ENOBUFS; break }
                    throw KernelError(opName, errno: err, detail: err == EAGAIN
                        ? "no reply for elements of \(table) \(set) within 10 s" : "reading elements of \(table) \(set)")
                }
                if n > NFTablesSocket.receiveBufferSize {
                    throw KernelError(opName, errno: EMSGSIZE, detail: "reply datagram of \(n) bytes truncated")
                }
                forEachMessage(in: n) { nlh, len in
                    guard nlh.pointee.nlmsg_seq == seq, status == nil else { return }
                    switch Int32(nlh.pointee.nlmsg_type) {
                    case NLMSG_ERROR:
                        var info = aip_nft_error_info()
                        status = aip_nft_parse_error(nlh, len, &info) == 0 ? info.error : -EPROTO
                    case NLMSG_NOOP, NLMSG_OVERRUN, NLMSG_DONE:
                        break
                    default:
                        answered += 1
                        forEachParsedElement(in: UnsafePointer(nlh), body)
                    }
                }
            }
            repliesMayBePending = false
            switch status! {
            case 0:
                next = end
            case -ENOBUFS where perRequest > 4:
                // The replies did not fit the receive buffer: ask fewer keys at a time.
                next += answered
                perRequest /= 2
            case -ENOENT where next + answered < end:
                // The key after the last one answered has no element.
                missing += 1
                next += answered + 1
                if missing > total / 2 + 16 {
                    throw KernelError(opName, errno: ENOENT, detail: "\(missing) of \(total) keys asked for have no element in \(table) \(set) (does the set exist?)")
                }
            default:
                throw KernelError(opName, errno: -status!, detail: "reading elements of \(table) \(set)")
            }
        }
        return missing
    }

    static func getName(_ type: UInt16) -> String {
        switch UInt32(type) {
        case NFT_MSG_GETTABLE.rawValue: return "NFT_MSG_GETTABLE"
        case NFT_MSG_GETCHAIN.rawValue: return "NFT_MSG_GETCHAIN"
        case NFT_MSG_GETRULE.rawValue: return "NFT_MSG_GETRULE"
        case NFT_MSG_GETSET.rawValue: return "NFT_MSG_GETSET"
        case NFT_MSG_GETSETELEM.rawValue: return "NFT_MSG_GETSETELEM"
        default: return "NFT_MSG_\(type)"
        }
    }
}

/// NLMSG_HDRLEN (a macro Swift does not import).
let NLMSG_HDRLEN_VALUE: Int32 = 16
