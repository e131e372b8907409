#if canImport(Glibc)
import Glibc
#endif
import CNFTables

/// Owner of one `struct nftnl_set` (and the elements libnftnl attached to it).
final class NftnlSet {
    let raw: OpaquePointer
    init() {
        guard let s = nftnl_set_alloc() else { fatalError("nftnl_set_alloc: out of memory") }
        raw = s
    }
    deinit { nftnl_set_free(raw) }
}

/// Owner of one `struct nftnl_expr` until it is handed to a rule or a set (which then own it).
final class NftnlExpr {
    private(set) var raw: OpaquePointer?
    init(_ name: String) {
        guard let e = nftnl_expr_alloc(name) else { fatalError("nftnl_expr_alloc(\(name)) failed") }
        raw = e
    }
    /// Gives the handle away (to `nftnl_rule_add_expr` / `nftnl_set_add_expr`).
    func release() -> OpaquePointer {
        guard let r = raw else { preconditionFailure("expression already handed over") }
        raw = nil
        return r
    }
    deinit { if let raw { nftnl_expr_free(raw) } }
}

/// A named set or map as nft declares it:
/// `map NAME { type KEY : DATA; flags timeout; [counter] }`.
struct NFTSetSpec: Equatable {
    var family: UInt8
    var table: String
    var name: String
    var key: NFTTypeSpec
    /// nil for a plain set, the data type for a map.
    var data: NFTTypeSpec?
    /// `NFT_SET_TIMEOUT` etc.; `NFT_SET_MAP` is added for maps.
    var flags: UInt32
    /// Transaction-local id, so rules in the same batch can reference the new set.
    var id: UInt32
    /// A set-level `counter` expression: the kernel attaches a counter to every element.
    var counter: Bool = false

    var kernelFlags: UInt32 { flags | (data != nil ? UInt32(NFT_SET_MAP.rawValue) : 0) }

    func makeNftnl() -> NftnlSet {
        precondition(table.utf8.count < Int(NFT_NAME_MAXLEN) && name.utf8.count < Int(NFT_NAME_MAXLEN))
        let s = NftnlSet()
        nftnl_set_set_str(s.raw, UInt16(NFTNL_SET_TABLE.rawValue), table)
        nftnl_set_set_str(s.raw, UInt16(NFTNL_SET_NAME.rawValue), name)
        nftnl_set_set_u32(s.raw, UInt16(NFTNL_SET_FAMILY.rawValue), UInt32(family))
        nftnl_set_set_u32(s.raw, UInt16(NFTNL_SET_FLAGS.rawValue), kernelFlags)
        nftnl_set_set_u32(s.raw, UInt16(NFTNL_SET_KEY_TYPE.rawValue), key.typeID)
        nftnl_set_set_u32(s.raw, UInt16(NFTNL_SET_KEY_LEN.rawValue), UInt32(key.length))
        if let data {
            nftnl_set_set_u32(s.raw, UInt16(NFTNL_SET_DATA_TYPE.rawValue), data.typeID)
            nftnl_set_set_u32(s.raw, UInt16(NFTNL_SET_DATA_LEN.rawValue), UInt32(data.length))
        }
        nftnl_set_set_u32(s.raw, UInt16(NFTNL_SET_ID.rawValue), id)
        // The userdata nft(8) reads back to print keys and data: byte order of key and data
        // (0 for concatenations, whose fields carry their own order by type).
        let ud = NftnlUserData()
        ud.putU32(UInt8(NFTNL_UDATA_SET_KEYBYTEORDER.rawValue), key.udataByteOrder)
        if let data { ud.putU32(UInt8(NFTNL_UDATA_SET_DATABYTEORDER.rawValue), data.udataByteOrder) }
        nftnl_set_set_data(s.raw, UInt16(NFTNL_SET_USERDATA.rawValue), ud.data, ud.length)
        if counter { nftnl_set_add_expr(s.raw, NftnlExpr("counter").release()) }
        return s
    }

    static let messageReserve = 256 + 2 * Int(NFT_NAME_MAXLEN) + Int(NFT_USERDATA_MAXLEN)
}

extension NFTTransaction {
    /// `NFT_MSG_NEWSET` with `NLM_F_CREATE | NLM_F_EXCL`.
    func addSet(_ spec: NFTSetSpec) {
        let s = spec.makeNftnl()
        append(type: UInt16(NFT_MSG_NEWSET.rawValue), family: spec.family,
               flags: UInt16(NLM_F_CREATE | NLM_F_EXCL),
               subject: .set(spec.name), reserve: NFTSetSpec.messageReserve) { nlh in
            nftnl_set_nlmsg_build_payload(nlh, s.raw)
        }
    }
}

/// A set or map as the kernel reports it (`NFT_MSG_GETSET`).
public struct NFTSetInfo: Sendable, Equatable {
    public var family: UInt8
    public var table: String
    public var name: String
    public var flags: UInt32
    public var keyType: UInt32
    public var keyLength: UInt32
    public var dataType: UInt32?
    public var dataLength: UInt32?
    /// `NFTNL_UDATA_SET_KEYBYTEORDER` / `DATABYTEORDER` from the set's userdata, if present.
    public var keyByteOrder: UInt32?
    public var dataByteOrder: UInt32?
    /// Names of the set-level expressions (`["counter"]` for qos).
    public var expressions: [String]

    init?(message nlh: UnsafePointer<nlmsghdr>) {
        let s = NftnlSet()
        guard nftnl_set_nlmsg_parse(nlh, s.raw) >= 0,
              let table = nftnl_set_get_str(s.raw, UInt16(NFTNL_SET_TABLE.rawValue)),
              let name = nftnl_set_get_str(s.raw, UInt16(NFTNL_SET_NAME.rawValue)) else { return nil }
        func isSet(_ a: nftnl_set_attr) -> Bool { nftnl_set_is_set(s.raw, UInt16(a.rawValue)) }
        func u32(_ a: nftnl_set_attr) -> UInt32 { nftnl_set_get_u32(s.raw, UInt16(a.rawValue)) }
        self.table = String(cString: table)
        self.name = String(cString: name)
        family = UInt8(truncatingIfNeeded: u32(NFTNL_SET_FAMILY))
        flags = u32(NFTNL_SET_FLAGS)
        keyType = u32(NFTNL_SET_KEY_TYPE)
        keyLength = u32(NFTNL_SET_KEY_LEN)
        dataType = isSet(NFTNL_SET_DATA_TYPE) ? u32(NFTNL_SET_DATA_TYPE) : nil
        dataLength = isSet(NFTNL_SET_DATA_LEN) ? u32(NFTNL_SET_DATA_LEN) : nil
        keyByteOrder = nil
        dataByteOrder = nil
        if isSet(NFTNL_SET_USERDATA) {
            var len: UInt32 = 0
            if let p = nftnl_set_get_data(s.raw, UInt16(NFTNL_SET_USERDATA.rawValue), &len) {
                let tlv = NftnlUserData.parse(Array(UnsafeRawBufferPointer(start: p, count: Int(len))))
                func u32(_ b: [UInt8]?) -> UInt32? { b.flatMap { $0.count == 4 ? NFTBytes.readHost32($0[...]) : nil } }
                keyByteOrder = u32(tlv[UInt8(NFTNL_UDATA_SET_KEYBYTEORDER.rawValue)])
                dataByteOrder = u32(tlv[UInt8(NFTNL_UDATA_SET_DATABYTEORDER.rawValue)])
            }
        }
        var names: [String] = []
        withUnsafeMutablePointer(to: &names) { ptr in
            _ = nftnl_set_expr_foreach(s.raw, { e, ctx in
                let list = ctx!.assumingMemoryBound(to: [String].self)
                if let n = nftnl_expr_get_str(e, UInt16(NFTNL_EXPR_NAME)) { list.pointee.append(String(cString: n)) }
                return 0
            }, ptr)
        }
        expressions = names
    }

    /// Differences from what `spec` would create, as human-readable reasons (empty if equal).
    func differences(from spec: NFTSetSpec) -> [String] {
        var out: [String] = []
        let what = "set \(name)"
        if flags != spec.kernelFlags { out.append("\(what): flags \(hex32(flags)), expected \(hex32(spec.kernelFlags))") }
        if keyType != spec.key.typeID || keyLength != UInt32(spec.key.length) {
            out.append("\(what): key type \(hex32(keyType))/\(keyLength) bytes, expected \(spec.key.text) (\(hex32(spec.key.typeID))/\(spec.key.length))")
        }
        if let d = spec.data {
            if dataType != d.typeID || dataLength != UInt32(d.length) {
                out.append("\(what): data type \(dataType.map(hex32) ?? "none"), expected \(d.text) (\(hex32(d.typeID)))")
            }
            if dataByteOrder != d.udataByteOrder { out.append("\(what): userdata data byte order missing or wrong") }
        } else if dataType != nil {
            out.append("\(what): is a map, expected a set")
        }
        if keyByteOrder != spec.key.udataByteOrder { out.append("\(what): userdata key byte order missing or wrong") }
        let expectedExprs = spec.counter ? ["counter"] : []
        if expressions != expectedExprs { out.append("\(what): expressions \(expressions), expected \(expectedExprs)") }
        return out
    }
}

extension NFTablesSocket {
    /// Lists the sets and maps of `table` (`nft list sets`), without elements. Read-only.
    public func listSets(table: String, family: UInt8 = UInt8(NFPROTO_INET)) throws(KernelError) -> [NFTSetInfo] {
        var out: [NFTSetInfo] = []
        let s = NftnlSet()
        nftnl_set_set_str(s.raw, UInt16(NFTNL_SET_TABLE.rawValue), table)
        try dump(type: UInt16(NFT_MSG_GETSET.rawValue), family: family, what: "sets of \(table)", onStart: { out.removeAll() }, payload: { nlh in
            nftnl_set_nlmsg_build_payload(nlh, s.raw)
        }, onMessage: { nlh in
            if let i = NFTSetInfo(message: nlh), i.table == table { out.append(i) }
        })
        return out
    }
}
