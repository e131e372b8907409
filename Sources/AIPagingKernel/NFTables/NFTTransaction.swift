#if canImport(Glibc)
import Glibc
#endif
import CNFTables
import AIPagingCore

/// The key of an element operation, kept typed so error messages can name it without
/// formatting a string for every one of 100 000 elements up front.
enum NFTElementKey {
    case steering(NFTSteeringKey)
    case anchor(mark: UInt32)
    case qos(mark: UInt32, direction: NFTConntrackDirection)

    var text: String {
        switch self {
        case .steering(let k): return "\(k.client) . \(k.service) . \(k.proto) . \(k.port)"
        case .anchor(let m): return hex32(m)
        case .qos(let m, let d): return "\(hex32(m)) . \(d)"
        }
    }
}

/// What one message of a transaction acts on.
enum NFTSubject {
    case table(String)
    case chain(String)
    case rule(chain: String, summary: String)
    case set(String)
    case element(set: String, key: NFTElementKey)

    var text: String {
        switch self {
        case .table(let n): return n
        case .chain(let n): return n
        case .rule(let c, let s): return "\(c): \(s)"
        case .set(let n): return n
        case .element(let s, let k): return "\(s) \(k.text)"
        }
    }
}

/// One netlink message of a transaction and where it sits in the buffer.
struct NFTOperation {
    var type: UInt16
    var offset: Int
    var length: Int
    var subject: NFTSubject

    static func messageName(_ type: UInt16) -> String {
        switch UInt32(type) {
        case NFT_MSG_NEWTABLE.rawValue: return "NFT_MSG_NEWTABLE"
        case NFT_MSG_DELTABLE.rawValue: return "NFT_MSG_DELTABLE"
        case NFT_MSG_NEWCHAIN.rawValue: return "NFT_MSG_NEWCHAIN"
        case NFT_MSG_DELCHAIN.rawValue: return "NFT_MSG_DELCHAIN"
        case NFT_MSG_NEWRULE.rawValue: return "NFT_MSG_NEWRULE"
        case NFT_MSG_DELRULE.rawValue: return "NFT_MSG_DELRULE"
        case NFT_MSG_NEWSET.rawValue: return "NFT_MSG_NEWSET"
        case NFT_MSG_DELSET.rawValue: return "NFT_MSG_DELSET"
        case NFT_MSG_NEWSETELEM.rawValue: return "NFT_MSG_NEWSETELEM"
        case NFT_MSG_DELSETELEM.rawValue: return "NFT_MSG_DELSETELEM"
        default: return "NFT_MSG_\(type)"
        }
    }

    /// `NFT_MSG_NEWSETELEM lease4 198.18.1.2 . 198.18.100.10 . udp . 7000`.
    var description: String { "\(NFTOperation.messageName(type)) \(subject.text)" }
}

/// An nftables transaction under construction: an ordered list of netlink messages that
/// `NFTablesSocket.commit` sends between `NFNL_MSG_BATCH_BEGIN` and `NFNL_MSG_BATCH_END`, so the
/// kernel applies all of them or none.
///
/// Building a transaction touches no kernel state. Messages are encoded with libnftnl as they
/// are added (one message per object or element, so a kernel error names exactly one
/// operation). Sequence numbers are assigned by the socket at commit time, so a transaction can
/// be committed again (e.g. after a failure was repaired).
///
/// Not thread-safe and not `Sendable`: build and commit it on the actor that owns the socket.
public final class NFTTransaction {
    let buffer: NFTMessageBuffer
    private(set) var operations: [NFTOperation] = []

    /// An empty transaction.
    public init() {
        buffer = NFTMessageBuffer()
    }

    /// Number of messages (operations) in the transaction.
    public var operationCount: Int { operations.count }

    /// Encoded size of the messages in bytes, without batch framing.
    public var encodedBytes: Int { buffer.count }

    /// Human-readable list of the operations, in order (for logs and tests).
    public var operationDescriptions: [String] { operations.map(\.description) }

    /// Appends one message: `nftnl_nlmsg_build_hdr` with `type`/`family`/`flags`, then `payload`.
    func append(type: UInt16, family: UInt8, flags: UInt16, subject: NFTSubject, reserve: Int,
                payload: (UnsafeMutablePointer<nlmsghdr>) -> Void) {
        let (offset, length) = buffer.appendMessage(reserve: reserve) { region in
            guard let nlh = nftnl_nlmsg_build_hdr(region, type,
                                                  UInt16(family), flags, 0) else {
                fatalError("nftnl_nlmsg_build_hdr returned NULL")
            }
            payload(nlh)
            return nlh
        }
        operations.append(NFTOperation(type: type, offset: offset, length: length, subject: subject))
    }
}

/// How `NFTablesSocket.commit` learns the outcome of a transaction.
public enum NFTAckMode: Sendable {
    /// No per-message `NLM_F_ACK`: the kernel answers only failing messages, plus the ACK of
    /// `BATCH_END` once the batch is committed. One reply per successful transaction. The
    /// default: per-message ACKs cost a kernel skb (~1 KiB of receive buffer) and a `recv` per
    /// message for no information the END ACK and the errors do not already give.
    case errorsOnly
    /// `NLM_F_ACK` on every message: one reply per message. Costs a kernel skb and a receive
    /// per message; kept for measurement and debugging.
    case perMessage
}

/// Outcome of a successful `NFTablesSocket.commit`.
public struct NFTCommitResult: Sendable, Equatable {
    /// Messages sent (tables, chains, rules, sets, elements).
    public var operations: Int
    /// Kernel transactions used. 1 normally; more when the encoded size exceeded the cap and the
    /// operations were split into consecutive transactions, each atomic on its own.
    public var transactions: Int
    /// Bytes sent, batch framing included.
    public var bytes: Int
    /// True if the kernel acknowledged every transaction's `BATCH_END` (kernels from 6.10 do);
    /// false means success was inferred from the absence of errors (older kernels).
    public var endAcknowledged: Bool

    /// True if the commit needed more than one kernel transaction.
    public var wasSplit: Bool { transactions > 1 }
}

/// A failed `NFTablesSocket.commit`.
///
/// `failures[0].operation` names the first failing message
/// (`NFT_MSG_NEWSETELEM lease4 198.18.1.2 . 198.18.100.10 . udp . 7000`) and its errno. Nothing
/// of the failing kernel transaction was applied; when the commit was split, the transactions
/// before it (`committedTransactions`) were applied and the ones after it were not sent.
public struct NFTTransactionError: Error, Sendable, CustomStringConvertible {
    /// Every error the kernel reported for the failing transaction, in message order.
    public var failures: [KernelError]
    /// Transactions of this commit applied before the failing one.
    public var committedTransactions: Int
    /// Transactions the commit was split into.
    public var totalTransactions: Int
    /// True if some replies were lost (receive buffer overrun, ENOBUFS): `failures` is partial.
    /// The failing transaction was still not applied (see `NFTablesSocket.commit`).
    public var repliesLost: Bool

    /// The first failure, in message order.
    public var first: KernelError { failures[0] }

    public var description: String {
        var s = first.description
        if failures.count > 1 { s += " (and \(failures.count - 1) more error\(failures.count == 2 ? "" : "s"))" }
        if repliesLost { s += " (some kernel replies were lost)" }
        if totalTransactions > 1 {
            s += "; split commit: \(committedTransactions) of \(totalTransactions) transactions were applied before this one"
        }
        return s
    }
}
