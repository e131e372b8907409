#if canImport(Glibc)
import Glibc
#endif
import CNetlinkRoute
import AIPagingCore

/// Byte-level helpers for netlink replies: message walking, attribute walking, error decoding.
/// Every function works on a borrowed buffer; nothing here keeps a pointer past its call.
enum NetlinkWire {
    static let headerSize = 16  // sizeof(struct nlmsghdr)
    static let alignTo = 4

    @inline(__always) static func align(_ n: Int) -> Int { (n + alignTo - 1) & ~(alignTo - 1) }

    /// One netlink message inside a received datagram.
    struct Message {
        var type: UInt16
        var flags: UInt16
        var sequence: UInt32
        /// `nlmsg_pid`: in a notification, the port id of the socket whose request caused it
        /// (0 when the kernel itself made the change).
        var portID: UInt32 = 0
        /// The bytes after the 16-byte header, `nlmsg_len - 16` long.
        var payload: UnsafeRawBufferPointer
        /// The whole message, header included (`nlmsg_len` bytes).
        var whole: UnsafeRawBufferPointer
    }

    /// Calls `body` for each complete message in `datagram`; a truncated tail is ignored.
    static func forEachMessage(
        in datagram: UnsafeRawBufferPointer, _ body: (Message) throws(KernelError) -> Void
    ) throws(KernelError) {
        var offset = 0
        while offset + headerSize <= datagram.count {
            let len = Int(datagram.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
            guard len >= headerSize, offset + len <= datagram.count else { return }
            let message = Message(
                type: datagram.loadUnaligned(fromByteOffset: offset + 4, as: UInt16.self),
                flags: datagram.loadUnaligned(fromByteOffset: offset + 6, as: UInt16.self),
                sequence: datagram.loadUnaligned(fromByteOffset: offset + 8, as: UInt32.self),
                portID: datagram.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self),
                payload: UnsafeRawBufferPointer(rebasing: datagram[(offset + headerSize)..<(offset + len)]),
                whole: UnsafeRawBufferPointer(rebasing: datagram[offset..<(offset + len)]))
            try body(message)
            offset += align(len)
        }
    }

    /// Calls `body(type, payload)` for each attribute (type without NLA_F_NESTED/NLA_F_NET_BYTEORDER).
    @inline(__always)
    static func forEachAttribute(
        in buffer: UnsafeRawBufferPointer, _ body: (UInt16, UnsafeRawBufferPointer) -> Void
    ) {
        var offset = 0
        while offset + 4 <= buffer.count {
            let len = Int(buffer.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
            let type = buffer.loadUnaligned(fromByteOffset: offset + 2, as: UInt16.self) & 0x3fff
            guard len >= 4, offset + len <= buffer.count else { return }
            body(type, UnsafeRawBufferPointer(rebasing: buffer[(offset + 4)..<(offset + len)]))
            offset += align(len)
        }
    }

    static func u8(_ b: UnsafeRawBufferPointer) -> UInt8? { b.count >= 1 ? b[0] : nil }
    static func u16(_ b: UnsafeRawBufferPointer) -> UInt16? { b.count >= 2 ? b.loadUnaligned(as: UInt16.self) : nil }
    static func u32(_ b: UnsafeRawBufferPointer) -> UInt32? { b.count >= 4 ? b.loadUnaligned(as: UInt32.self) : nil }
    static func u64(_ b: UnsafeRawBufferPointer) -> UInt64? { b.count >= 8 ? b.loadUnaligned(as: UInt64.self) : nil }
    static func be16(_ b: UnsafeRawBufferPointer) -> UInt16? { u16(b).map { UInt16(bigEndian: $0) } }
    static func be32(_ b: UnsafeRawBufferPointer) -> UInt32? { u32(b).map { UInt32(bigEndian: $0) } }
    static func be64(_ b: UnsafeRawBufferPointer) -> UInt64? { u64(b).map { UInt64(bigEndian: $0) } }
    static func string(_ b: UnsafeRawBufferPointer) -> String {
        let bytes = b.prefix { $0 != 0 }
        return String(decoding: bytes, as: UTF8.self)
    }
    static func address(_ b: UnsafeRawBufferPointer) -> IPAddress? { IPAddress(bytes: b) }

    /// Decodes an NLMSG_ERROR payload: errno (positive, 0 = ACK) and the extended-ACK message.
    /// With NETLINK_CAP_ACK the original request is not echoed; without it its payload is skipped.
    static func decodeError(_ message: Message) -> (errno: Int32, message: String?) {
        let p = message.payload
        guard p.count >= 4 else { return (EPROTO, nil) }
        let error = -p.loadUnaligned(as: Int32.self)
        var tlvOffset = 4 + headerSize
        let capped = message.flags & UInt16(NLM_F_CAPPED) != 0
        if !capped, p.count >= 4 + 4 {
            let origLen = Int(p.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
            tlvOffset = 4 + align(origLen)
        }
        var text: String?
        if message.flags & UInt16(NLM_F_ACK_TLVS) != 0, tlvOffset < p.count {
            forEachAttribute(in: UnsafeRawBufferPointer(rebasing: p[tlvOffset...])) { type, value in
                if type == UInt16(NLMSGERR_ATTR_MSG.rawValue) { text = string(value) }
            }
        }
        return (error, text)
    }
}

extension KernelError {
    /// A KernelError whose detail joins what the agent was doing, the kernel's extended-ACK text
    /// and a hint.
    init(_ operation: String, errno: Int32, doing: String, kernelMessage: String?, hint: String?) {
        var parts: [String] = [doing]
        if let kernelMessage, !kernelMessage.isEmpty { parts.append("kernel says \"\(kernelMessage)\"") }
        if let hint, !hint.isEmpty { parts.append(hint) }
        self.init(operation, errno: errno, detail: parts.joined(separator: "; "))
    }
}
