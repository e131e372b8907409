#if canImport(Glibc)
import Glibc
#endif
import CNFTables

/// A growable, contiguous byte buffer of netlink messages; the only owner of its heap block.
///
/// libnftnl's `*_nlmsg_build_payload` functions write attributes with unchecked `mnl_attr_put`,
/// so every message is built into a region reserved up front (`reserve`, a proven upper bound
/// for the object being encoded) and its final length is checked against that bound. The buffer
/// only grows (doubling), so appending N messages is amortised O(total bytes).
///
/// Not thread-safe; owned by one `NFTTransaction`.
final class NFTMessageBuffer {
    private(set) var base: UnsafeMutableRawPointer
    private(set) var capacity: Int
    private(set) var count: Int = 0

    init(initialCapacity: Int = 16 * 1024) {
        capacity = max(initialCapacity, 4096)
        guard let p = malloc(capacity) else { fatalError("NFTMessageBuffer: out of memory (\(capacity) bytes)") }
        base = p
    }

    deinit { free(base) }

    /// Makes room for `extra` more bytes past `count`.
    private func ensureFree(_ extra: Int) {
        let (needed, overflow) = count.addingReportingOverflow(extra)
        precondition(!overflow, "NFTMessageBuffer: size overflow")
        if needed <= capacity { return }
        var newCapacity = capacity
        while newCapacity < needed {
            let (doubled, o) = newCapacity.multipliedReportingOverflow(by: 2)
            precondition(!o, "NFTMessageBuffer: size overflow")
            newCapacity = doubled
        }
        guard let p = realloc(base, newCapacity) else {
            fatalError("NFTMessageBuffer: out of memory growing to \(newCapacity) bytes")
        }
        base = p
        capacity = newCapacity
    }

    /// Appends one netlink message. `build` receives a scratch region of `reserve` bytes and
    /// returns the header of the message it wrote there (`nftnl_nlmsg_build_hdr` + payload).
    /// Returns the message's offset and (aligned) length in the buffer.
    func appendMessage(
        reserve: Int,
        _ build: (UnsafeMutablePointer<CChar>) -> UnsafeMutablePointer<nlmsghdr>
    ) -> (offset: Int, length: Int) {
        ensureFree(reserve)
        let start = base + count
        let nlh = build(start.assumingMemoryBound(to: CChar.self))
        precondition(UnsafeMutableRawPointer(nlh) == start, "message not built at the reserved region")
        let length = Int(nlh.pointee.nlmsg_len)
        precondition(length >= MemoryLayout<nlmsghdr>.size && length <= reserve,
                     "netlink message of \(length) bytes exceeds its reserved bound \(reserve): encoder bug")
        let aligned = (length + 3) & ~3
        let offset = count
        count += aligned
        return (offset, aligned)
    }

    /// Overwrites the sequence number of the message at `offset` (assigned at send time).
    func setSequence(_ seq: UInt32, at offset: Int) {
        precondition(offset >= 0 && offset + MemoryLayout<nlmsghdr>.size <= count)
        (base + offset).assumingMemoryBound(to: nlmsghdr.self).pointee.nlmsg_seq = seq
    }

    /// ORs netlink flags into the message at `offset`.
    func addFlags(_ flags: UInt16, at offset: Int) {
        precondition(offset >= 0 && offset + MemoryLayout<nlmsghdr>.size <= count)
        (base + offset).assumingMemoryBound(to: nlmsghdr.self).pointee.nlmsg_flags |= flags
    }

    /// Clears netlink flags of the message at `offset`.
    func removeFlags(_ flags: UInt16, at offset: Int) {
        precondition(offset >= 0 && offset + MemoryLayout<nlmsghdr>.size <= count)
        (base + offset).assumingMemoryBound(to: nlmsghdr.self).pointee.nlmsg_flags &= ~flags
    }

    func removeAll() { count = 0 }
}
