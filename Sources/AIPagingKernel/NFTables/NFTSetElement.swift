#if canImport(Glibc)
import Glibc
#endif
import CNFTables

/// Owner of one `struct nftnl_set_elem` until it is attached to an `NftnlSet`.
final class NftnlSetElem {
    private(set) var raw: OpaquePointer?
    init() {
        guard let e = nftnl_set_elem_alloc() else { fatalError("nftnl_set_elem_alloc: out of memory") }
        raw = e
    }
    func release() -> OpaquePointer {
        guard let r = raw else { preconditionFailure("element already handed over") }
        raw = nil
        return r
    }
    deinit { if let raw { nftnl_set_elem_free(raw) } }
}

/// One element operation on a named set: key bytes, optional map data bytes, timeout.
/// The bytes are already in the set's layout (see `NFTTypeSpec`).
struct NFTElementSpec {
    var family: UInt8
    var table: String
    var set: String
    var key: [UInt8]
    var data: [UInt8]?
    /// `NFTA_SET_ELEM_TIMEOUT` in milliseconds; nil = the set's default (none here).
    var timeoutMs: UInt64?

    /// An nftnl_set naming the set, holding this single element.
    func makeNftnl() -> NftnlSet {
        precondition(table.utf8.count < Int(NFT_NAME_MAXLEN) && set.utf8.count < Int(NFT_NAME_MAXLEN))
        precondition(!key.isEmpty && key.count <= Int(NFT_DATA_VALUE_MAXLEN) && (data?.count ?? 0) <= Int(NFT_DATA_VALUE_MAXLEN))
        let s = NftnlSet()
        nftnl_set_set_str(s.raw, UInt16(NFTNL_SET_TABLE.rawValue), table)
        nftnl_set_set_str(s.raw, UInt16(NFTNL_SET_NAME.rawValue), set)
        let e = NftnlSetElem()
        _ = key.withUnsafeBytes { nftnl_set_elem_set(e.raw!, UInt16(NFTNL_SET_ELEM_KEY), $0.baseAddress, UInt32(key.count)) }
        if let data {
            _ = data.withUnsafeBytes { nftnl_set_elem_set(e.raw!, UInt16(NFTNL_SET_ELEM_DATA), $0.baseAddress, UInt32(data.count)) }
        }
        if let timeoutMs { nftnl_set_elem_set_u64(e.raw!, UInt16(NFTNL_SET_ELEM_TIMEOUT), timeoutMs) }
        nftnl_set_elem_add(s.raw, e.release())
        return s
    }

    /// Header + table + set names + element nest (key, data, timeout) with padding.
    static let messageReserve = 128 + 2 * Int(NFT_NAME_MAXLEN) + 2 * (Int(NFT_DATA_VALUE_MAXLEN) + 16) + 64
}

extension NFTTransaction {
    /// `NFT_MSG_NEWSETELEM` with `NLM_F_CREATE | NLM_F_EXCL` (`nft create element`: an existing
    /// key is an error, EEXIST).
    func addElement(_ spec: NFTElementSpec, subject key: NFTElementKey) {
        let s = spec.makeNftnl()
        append(type: UInt16(NFT_MSG_NEWSETELEM.rawValue), family: spec.family,
               flags: UInt16(NLM_F_CREATE | NLM_F_EXCL),
               subject: .element(set: spec.set, key: key), reserve: NFTElementSpec.messageReserve) { nlh in
            nftnl_set_elems_nlmsg_build_payload(nlh, s.raw)
        }
    }

    /// `NFT_MSG_NEWSETELEM` with `NLM_F_CREATE` only (`nft add element`): no error if the same
    /// element (same data) exists.
    func ensureElement(_ spec: NFTElementSpec, subject key: NFTElementKey) {
        let s = spec.makeNftnl()
        append(type: UInt16(NFT_MSG_NEWSETELEM.rawValue), family: spec.family,
               flags: UInt16(NLM_F_CREATE),
               subject: .element(set: spec.set, key: key), reserve: NFTElementSpec.messageReserve) { nlh in
            nftnl_set_elems_nlmsg_build_payload(nlh, s.raw)
        }
    }

    /// `NFT_MSG_DELSETELEM` (`nft delete element`): ENOENT if the key is absent.
    func deleteElement(_ spec: NFTElementSpec, subject key: NFTElementKey) {
        var keyOnly = spec
        keyOnly.data = nil
        keyOnly.timeoutMs = nil
        let s = keyOnly.makeNftnl()
        append(type: UInt16(NFT_MSG_DELSETELEM.rawValue), family: spec.family, flags: 0,
               subject: .element(set: spec.set, key: key), reserve: NFTElementSpec.messageReserve) { nlh in
            nftnl_set_elems_nlmsg_build_payload(nlh, s.raw)
        }
    }
}

/// An element as the kernel dumps it, bytes undecoded.
struct NFTRawElement {
    var key: [UInt8]
    var data: [UInt8]?
    var timeoutMs: UInt64?
    var expiresMs: UInt64?
    /// Packets and bytes of the element's `counter` expression, if it has one.
    var counter: (packets: UInt64, bytes: UInt64)?
}

extension NFTablesSocket {
    /// Dumps every element of `table`/`set` in one `NFT_MSG_GETSETELEM` dump. Read-only.
    ///
    /// A dump of a hash set spans several netlink rounds, and each round the kernel restarts
    /// its walk and skips the elements already sent (`nft_rhash_walk`). If the hash table is
    /// resized between rounds (it grows in a deferred worker after big inserts), the walk
    /// order changes and the dump repeats some elements and misses as many, without
    /// `NLM_F_DUMP_INTR`. Keys are unique in a set, so a repeated key proves such a dump; it is
    /// retried (up to 10 times, 10 ms apart).
    func listRawElements(table: String, set: String, family: UInt8) throws(KernelError) -> [NFTRawElement] {
        for attempt in 0..<10 {
            if attempt > 0 { usleep(10_000) }
            let out = try dumpRawElementsOnce(table: table, set: set, family: family)
            var seen = Swift.Set<[UInt8]>()
            seen.reserveCapacity(out.count)
            if out.allSatisfy({ seen.insert($0.key).inserted }) { return out }
            reorderedDumpRetries += 1
        }
        throw KernelError(NFTablesSocket.getName(UInt16(NFT_MSG_GETSETELEM.rawValue)), errno: EAGAIN,
                          detail: "elements of \(table) \(set) kept being reordered (hash resize) during the dump; retry later")
    }

    private func dumpRawElementsOnce(table: String, set: String, family: UInt8) throws(KernelError) -> [NFTRawElement] {
        var out: [NFTRawElement] = []
        try forEachElement(table: table, set: set, family: family, onStart: { out.removeAll() }) { e in
            out.append(NFTRawElement(parsing: e))
        }
        return out
    }

    /// Streams every element of `table`/`set` (one `NFT_MSG_GETSETELEM` dump) to `body`, which
    /// reads what it needs from the libnftnl element before the next one is parsed; `onStart`
    /// runs before each attempt of the dump (discard what `body` gathered).
    func forEachElement(table: String, set: String, family: UInt8, onStart: () -> Void,
                        _ body: (OpaquePointer) -> Void) throws(KernelError) {
        let request = NftnlSet()
        nftnl_set_set_str(request.raw, UInt16(NFTNL_SET_TABLE.rawValue), table)
        nftnl_set_set_str(request.raw, UInt16(NFTNL_SET_NAME.rawValue), set)
        try dump(type: UInt16(NFT_MSG_GETSETELEM.rawValue), family: family, what: "elements of \(table) \(set)", onStart: onStart, payload: { nlh in
            nftnl_set_elems_nlmsg_build_payload(nlh, request.raw)
        }, onMessage: { nlh in forEachParsedElement(in: nlh, body) })
    }
}

/// Hands each element of one `NFT_MSG_NEWSETELEM` message (a dump's or a GET's reply), parsed by
/// libnftnl, to `body`.
func forEachParsedElement(in nlh: UnsafePointer<nlmsghdr>, _ body: (OpaquePointer) -> Void) {
    let s = NftnlSet()
    guard nftnl_set_elems_nlmsg_parse(nlh, s.raw) >= 0 else { return }
    guard let iter = nftnl_set_elems_iter_create(s.raw) else { fatalError("out of memory") }
    defer { nftnl_set_elems_iter_destroy(iter) }
    while let e = nftnl_set_elems_iter_next(iter) { body(e) }
}

/// The `counter` expression of a parsed libnftnl element (a clone of the set's), if it has one.
func elementCounter(_ e: OpaquePointer) -> (packets: UInt64, bytes: UInt64)? {
    // Element expressions: NFTA_SET_ELEM_EXPR or NFTA_SET_ELEM_EXPRESSIONS, both walked by
    // nftnl_set_elem_expr_foreach.
    var found: (packets: UInt64, bytes: UInt64)? = nil
    withUnsafeMutablePointer(to: &found) { ptr in
        _ = nftnl_set_elem_expr_foreach(e, { expr, ctx in
            guard let expr, let name = nftnl_expr_get_str(expr, UInt16(NFTNL_EXPR_NAME)),
                  strcmp(name, "counter") == 0 else { return 0 }
            ctx!.assumingMemoryBound(to: Optional<(packets: UInt64, bytes: UInt64)>.self).pointee =
                (nftnl_expr_get_u64(expr, UInt16(NFTNL_EXPR_CTR_PACKETS)),
                 nftnl_expr_get_u64(expr, UInt16(NFTNL_EXPR_CTR_BYTES)))
            return 0
        }, ptr)
    }
    return found
}

extension NFTRawElement {
    /// Copies what the caller needs out of a parsed libnftnl element (owned by its set).
    fileprivate init(parsing e: OpaquePointer) {
        func isSet(_ a: Int) -> Bool { nftnl_set_elem_is_set(e, UInt16(a)) }
        func bytes(_ a: Int) -> [UInt8]? {
            guard isSet(a) else { return nil }
            var len: UInt32 = 0
            guard let p = nftnl_set_elem_get(e, UInt16(a), &len) else { return nil }
            return Array(UnsafeRawBufferPointer(start: p, count: Int(len)))
        }
        key = bytes(Int(NFTNL_SET_ELEM_KEY)) ?? []
        data = bytes(Int(NFTNL_SET_ELEM_DATA))
        timeoutMs = isSet(Int(NFTNL_SET_ELEM_TIMEOUT)) ? nftnl_set_elem_get_u64(e, UInt16(NFTNL_SET_ELEM_TIMEOUT)) : nil
        expiresMs = isSet(Int(NFTNL_SET_ELEM_EXPIRATION)) ? nftnl_set_elem_get_u64(e, UInt16(NFTNL_SET_ELEM_EXPIRATION)) : nil
        counter = elementCounter(e)
    }
}
