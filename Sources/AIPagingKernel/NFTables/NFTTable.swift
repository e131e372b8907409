#if canImport(Glibc)
import Glibc
#endif
import CNFTables

/// Owner of one `struct nftnl_table`.
final class NftnlTable {
    let raw: OpaquePointer
    init() {
        guard let t = nftnl_table_alloc() else { fatalError("nftnl_table_alloc: out of memory") }
        raw = t
    }
    deinit { nftnl_table_free(raw) }
}

/// Owner of one `struct nftnl_udata_buf` (TLV user data as nft writes it).
final class NftnlUserData {
    let raw: OpaquePointer
    init() {
        guard let b = nftnl_udata_buf_alloc(UInt32(NFT_USERDATA_MAXLEN)) else {
            fatalError("nftnl_udata_buf_alloc: out of memory")
        }
        raw = b
    }
    deinit { nftnl_udata_buf_free(raw) }

    func putU32(_ type: UInt8, _ value: UInt32) {
        precondition(nftnl_udata_put_u32(raw, type, value), "userdata over \(NFT_USERDATA_MAXLEN) bytes")
    }
    func putString(_ type: UInt8, _ value: String) {
        precondition(nftnl_udata_put_strz(raw, type, value), "userdata over \(NFT_USERDATA_MAXLEN) bytes")
    }
    var length: UInt32 { nftnl_udata_buf_len(raw) }
    var data: UnsafeMutableRawPointer { nftnl_udata_buf_data(raw) }

    /// Walks `type, len, value` TLVs (the nftnl_udata wire format) without trusting lengths.
    static func parse(_ bytes: [UInt8]) -> [UInt8: [UInt8]] {
        var out: [UInt8: [UInt8]] = [:]
        var i = 0
        while i + 2 <= bytes.count {
            let type = bytes[i], len = Int(bytes[i + 1])
            guard i + 2 + len <= bytes.count else { break }
            out[type] = Array(bytes[(i + 2)..<(i + 2 + len)])
            i += 2 + len
        }
        return out
    }
}

/// A table as the agent creates it (`nft add table FAMILY NAME { comment "..." }`).
struct NFTTableSpec {
    var family: UInt8
    var name: String
    /// `NFTA_TABLE_FLAGS`; 0 = not dormant, not owned (survives the agent's socket).
    var flags: UInt32 = 0
    /// `NFTA_TABLE_USERDATA` comment, printed by `nft list` as `comment "..."`.
    var comment: String?

    func makeNftnl(minimal: Bool = false) -> NftnlTable {
        precondition(name.utf8.count < Int(NFT_NAME_MAXLEN), "table name too long")
        let t = NftnlTable()
        nftnl_table_set_str(t.raw, UInt16(NFTNL_TABLE_NAME.rawValue), name)
        nftnl_table_set_u32(t.raw, UInt16(NFTNL_TABLE_FAMILY.rawValue), UInt32(family))
        if minimal { return t }
        nftnl_table_set_u32(t.raw, UInt16(NFTNL_TABLE_FLAGS.rawValue), flags)
        if let comment {
            precondition(comment.utf8.count < Int(NFTNL_UDATA_COMMENT_MAXLEN), "table comment too long")
            let ud = NftnlUserData()
            ud.putString(UInt8(NFTNL_UDATA_TABLE_COMMENT.rawValue), comment)
            nftnl_table_set_data(t.raw, UInt16(NFTNL_TABLE_USERDATA.rawValue), ud.data, ud.length)
        }
        return t
    }

    /// Upper bound of one table message: headers, name, flags, userdata, with padding.
    static let messageReserve = 64 + Int(NFT_NAME_MAXLEN) + 16 + Int(NFT_USERDATA_MAXLEN) + 16
}

extension NFTTransaction {
    /// `NFT_MSG_NEWTABLE`. `exclusive` adds `NLM_F_EXCL` (fails with EEXIST if the table
    /// exists, like `nft create table`); otherwise an existing table is left as it is (`nft add
    /// table`). `minimal` sends only the name, so an existing table's flags and comment are not
    /// touched.
    func addTable(_ spec: NFTTableSpec, exclusive: Bool, minimal: Bool = false) {
        let t = spec.makeNftnl(minimal: minimal)
        let flags = UInt16(NLM_F_CREATE) | (exclusive ? UInt16(NLM_F_EXCL) : 0)
        append(type: UInt16(NFT_MSG_NEWTABLE.rawValue), family: spec.family, flags: flags,
               subject: .table(spec.name), reserve: NFTTableSpec.messageReserve) { nlh in
            nftnl_table_nlmsg_build_payload(nlh, t.raw)
        }
    }

    /// `NFT_MSG_DELTABLE`: deletes the table and everything in it (`nft delete table`).
    func deleteTable(family: UInt8, name: String) {
        let t = NFTTableSpec(family: family, name: name).makeNftnl(minimal: true)
        append(type: UInt16(NFT_MSG_DELTABLE.rawValue), family: family, flags: 0,
               subject: .table(name), reserve: NFTTableSpec.messageReserve) { nlh in
            nftnl_table_nlmsg_build_payload(nlh, t.raw)
        }
    }
}

/// A table as the kernel reports it (`NFT_MSG_GETTABLE`).
public struct NFTTableInfo: Sendable, Equatable {
    public var family: UInt8
    public var name: String
    /// `NFTA_TABLE_FLAGS` (`NFT_TABLE_F_DORMANT` 0x1, `NFT_TABLE_F_OWNER` 0x2).
    public var flags: UInt32
    public var handle: UInt64
    /// Number of chains in the table.
    public var use: UInt32
    /// The userdata comment (`comment "..."` in `nft list`), if any.
    public var comment: String?

    /// `NFT_TABLE_F_OWNER`: the table would vanish with its creator's socket.
    public var isOwned: Bool { flags & UInt32(NFT_TABLE_F_OWNER.rawValue) != 0 }
    /// `NFT_TABLE_F_DORMANT`: the table's hooks are not registered.
    public var isDormant: Bool { flags & UInt32(NFT_TABLE_F_DORMANT.rawValue) != 0 }

    init?(message nlh: UnsafePointer<nlmsghdr>) {
        let t = NftnlTable()
        guard nftnl_table_nlmsg_parse(nlh, t.raw) >= 0,
              let name = nftnl_table_get_str(t.raw, UInt16(NFTNL_TABLE_NAME.rawValue)) else { return nil }
        self.name = String(cString: name)
        family = UInt8(truncatingIfNeeded: nftnl_table_get_u32(t.raw, UInt16(NFTNL_TABLE_FAMILY.rawValue)))
        flags = nftnl_table_get_u32(t.raw, UInt16(NFTNL_TABLE_FLAGS.rawValue))
        handle = nftnl_table_get_u64(t.raw, UInt16(NFTNL_TABLE_HANDLE.rawValue))
        use = nftnl_table_get_u32(t.raw, UInt16(NFTNL_TABLE_USE.rawValue))
        comment = nil
        if nftnl_table_is_set(t.raw, UInt16(NFTNL_TABLE_USERDATA.rawValue)) {
            var len: UInt32 = 0
            if let p = nftnl_table_get_data(t.raw, UInt16(NFTNL_TABLE_USERDATA.rawValue), &len) {
                let bytes = Array(UnsafeRawBufferPointer(start: p, count: Int(len)))
                if let c = NftnlUserData.parse(bytes)[UInt8(NFTNL_UDATA_TABLE_COMMENT.rawValue)] {
                    comment = String(decoding: c.prefix { $0 != 0 }, as: UTF8.self)
                }
            }
        }
    }
}

extension NFTablesSocket {
    /// Lists the tables of `family` (`nft list tables FAMILY`). Read-only.
    public func listTables(family: UInt8 = UInt8(NFPROTO_INET)) throws(KernelError) -> [NFTTableInfo] {
        var out: [NFTTableInfo] = []
        try dump(type: UInt16(NFT_MSG_GETTABLE.rawValue), family: family, what: "tables", onStart: { out.removeAll() }, payload: { _ in
        }, onMessage: { nlh in
            if let t = NFTTableInfo(message: nlh) { out.append(t) }
        })
        return out
    }

    /// The table `name` of `family`, or nil if it does not exist. Read-only.
    public func table(named name: String, family: UInt8 = UInt8(NFPROTO_INET)) throws(KernelError) -> NFTTableInfo? {
        try listTables(family: family).first { $0.name == name }
    }
}
