#if canImport(Glibc)
import Glibc
#endif
import CNetlinkRoute

/// Blocking send/receive on a netlink socket fd, shared by the rtnetlink and ctnetlink sockets.
enum NetlinkIO {
    /// Sends `bytes` (one or more netlink messages) in one sendmsg().
    static func send(fd: Int32, _ bytes: [UInt8], operation: String) throws(KernelError) {
        var sent = -1
        var err: Int32 = 0
        repeat {
            sent = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, 0) }
            err = sent < 0 ? errno : 0
        } while sent < 0 && err == EINTR
        if sent < 0 {
            throw KernelError("sendmsg(\(operation))", errno: err,
                              detail: err == EMSGSIZE ? "batch larger than the socket send buffer" : "")
        }
        if sent != bytes.count {
            throw KernelError("sendmsg(\(operation))", errno: EMSGSIZE, detail: "short send: \(sent) of \(bytes.count) bytes")
        }
    }

    /// Receives one datagram into `buffer` and walks its messages. The socket has a 30 s
    /// SO_RCVTIMEO, so a lost reply ends as ETIMEDOUT instead of a hang.
    static func receive(
        fd: Int32, into buffer: UnsafeMutableRawBufferPointer, operation: String,
        _ body: (NetlinkWire.Message) throws(KernelError) -> Void
    ) throws(KernelError) {
        var n = -1
        var err: Int32 = 0
        repeat {
            n = recv(fd, buffer.baseAddress, buffer.count, 0)
            err = n < 0 ? errno : 0
        } while n < 0 && err == EINTR
        if n < 0 {
            switch err {
            case EAGAIN:
                throw KernelError("recvmsg(\(operation))", errno: ETIMEDOUT,
                                  detail: "no netlink reply within 30 s; the kernel may be stuck on a lock")
            case ENOBUFS:
                throw KernelError("recvmsg(\(operation))", errno: ENOBUFS,
                                  detail: "netlink receive buffer overrun: replies were lost; retry the operation")
            default:
                throw KernelError("recvmsg(\(operation))", errno: err)
            }
        }
        try NetlinkWire.forEachMessage(in: UnsafeRawBufferPointer(start: buffer.baseAddress, count: n), body)
    }

    /// Reads datagrams until every sequence number in `seqToIndex` got its NLMSG_ERROR (ACK or
    /// error), storing them in `results`.
    static func collectAcks(
        fd: Int32, buffer: UnsafeMutableRawBufferPointer, operation: String,
        seqToIndex: [UInt32: Int], into results: inout [(errno: Int32, message: String?)?]
    ) throws(KernelError) {
        var pending = seqToIndex.count
        while pending > 0 {
            try receive(fd: fd, into: buffer, operation: operation) { (m: NetlinkWire.Message) throws(KernelError) in
                guard m.type == UInt16(NLMSG_ERROR), let index = seqToIndex[m.sequence], results[index] == nil else { return }
                results[index] = NetlinkWire.decodeError(m)
                pending -= 1
            }
        }
    }
}
