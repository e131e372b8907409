import AIPagingCore

/// Transport protocol of a steering key (`inet_proto` in nft).
public enum NFTL4Protocol: UInt8, Sendable, Hashable, CustomStringConvertible {
    case tcp = 6
    case udp = 17

    public var description: String { self == .tcp ? "tcp" : "udp" }
}

/// Conntrack direction (`ct_dir` in nft): which half of a connection a packet belongs to.
public enum NFTConntrackDirection: UInt8, Sendable, Hashable, CustomStringConvertible {
    case original = 0
    case reply = 1

    public var description: String { self == .original ? "original" : "reply" }
}

/// An nft datatype as the kernel and nft(8) know it: the id stored in `NFTA_SET_KEY_TYPE` /
/// `NFTA_SET_DATA_TYPE` (concatenations pack ids 6 bits each, first field highest), its size in
/// bytes and its byte order (`NFTNL_UDATA_SET_{KEY,DATA}BYTEORDER`: 1 host, 2 big endian).
///
/// Ids and orders are those of nftables' `src/datatype.c` (`enum datatypes`), confirmed against
/// `nft --debug=mnl` output of nft 1.0.6 for this schema.
struct NFTDataType: Equatable, Sendable {
    var id: UInt32
    var size: Int
    var byteOrder: UInt32
    var name: String

    static let ipv4Addr = NFTDataType(id: 7, size: 4, byteOrder: 2, name: "ipv4_addr")
    static let ipv6Addr = NFTDataType(id: 8, size: 16, byteOrder: 2, name: "ipv6_addr")
    static let inetProto = NFTDataType(id: 12, size: 1, byteOrder: 2, name: "inet_proto")
    static let inetService = NFTDataType(id: 13, size: 2, byteOrder: 2, name: "inet_service")
    static let mark = NFTDataType(id: 19, size: 4, byteOrder: 1, name: "mark")
    static let classid = NFTDataType(id: 23, size: 4, byteOrder: 1, name: "classid")
    static let ctDir = NFTDataType(id: 27, size: 1, byteOrder: 1, name: "ct_dir")

    /// Bits per field in a concatenated type id (nft's `TYPE_BITS`).
    static let typeBits: UInt32 = 6
}

/// A set key or map data type: one datatype or a concatenation (`a . b . c`).
struct NFTTypeSpec: Equatable, Sendable {
    var fields: [NFTDataType]

    init(_ fields: NFTDataType...) { self.fields = fields }

    var isConcatenation: Bool { fields.count > 1 }

    /// `NFTA_SET_KEY_TYPE` / `NFTA_SET_DATA_TYPE`.
    var typeID: UInt32 {
        fields.reduce(0) { ($0 << NFTDataType.typeBits) | $1.id }
    }

    /// `NFTA_SET_KEY_LEN` / `NFTA_SET_DATA_LEN`: each field of a concatenation takes a whole
    /// number of 32-bit registers; a single field keeps its own size.
    var length: Int {
        isConcatenation ? fields.reduce(0) { $0 + ($1.size + 3) / 4 * 4 } : fields[0].size
    }

    /// What nft stores in the set's userdata byte-order slot: 0 (`BYTEORDER_INVALID`) for a
    /// concatenation, the datatype's own order otherwise.
    var udataByteOrder: UInt32 { isConcatenation ? 0 : fields[0].byteOrder }

    /// `ipv4_addr . inet_service` as nft prints it.
    var text: String { fields.map(\.name).joined(separator: " . ") }
}

/// Little helpers to lay out key and data bytes exactly as nft does.
enum NFTBytes {
    /// A 32-bit value in host byte order (`mark`, `classid`).
    static func host32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v) { Array($0) } }

    static func readHost32(_ b: ArraySlice<UInt8>) -> UInt32 {
        precondition(b.count == 4)
        var v: UInt32 = 0
        withUnsafeMutableBytes(of: &v) { dst in
            for (i, byte) in b.enumerated() { dst[i] = byte }
        }
        return v
    }

    /// One field of a concatenation: its bytes padded with zeros to a 4-byte boundary.
    static func padded(_ bytes: [UInt8]) -> [UInt8] {
        bytes + [UInt8](repeating: 0, count: (4 - bytes.count % 4) % 4)
    }

    /// `inet_service`: 2 bytes big endian.
    static func port(_ p: UInt16) -> [UInt8] { [UInt8(p >> 8), UInt8(p & 0xff)] }

    static func readPort(_ b: ArraySlice<UInt8>) -> UInt16 {
        UInt16(b[b.startIndex]) << 8 | UInt16(b[b.startIndex + 1])
    }
}

/// nft's text for a tc class id: `none` for 0, `root` for 0xffffffff, else `major:minor` in hex.
func classidText(_ c: UInt32) -> String {
    switch c {
    case 0: return "none"
    case 0xffff_ffff: return "root"
    default: return "\(String(c >> 16, radix: 16)):\(String(c & 0xffff, radix: 16))"
    }
}

func hex32(_ v: UInt32) -> String { "0x" + String(v, radix: 16) }
