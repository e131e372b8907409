import AIPagingCore

/// One direction of a conntrack entry (CTA_TUPLE_ORIG / CTA_TUPLE_REPLY).
public struct ConntrackTuple: Hashable, Sendable, CustomStringConvertible {
    public var source: IPAddress
    public var destination: IPAddress
    /// IP protocol number (6 = TCP, 17 = UDP, 1 = ICMP, 58 = ICMPv6, 132 = SCTP).
    public var protocolNumber: UInt8
    /// Ports for TCP/UDP/SCTP/DCCP/UDPLite; nil for other protocols.
    public var sourcePort: UInt16?
    public var destinationPort: UInt16?

    public init(source: IPAddress, destination: IPAddress, protocolNumber: UInt8,
                sourcePort: UInt16? = nil, destinationPort: UInt16? = nil) {
        self.source = source
        self.destination = destination
        self.protocolNumber = protocolNumber
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
    }

    public static let tcp: UInt8 = 6
    public static let udp: UInt8 = 17

    public var description: String {
        var s = "proto \(protocolNumber) src \(source) dst \(destination)"
        if let sourcePort { s += " sport \(sourcePort)" }
        if let destinationPort { s += " dport \(destinationPort)" }
        return s
    }
}

/// A conntrack entry as dumped by IPCTNL_MSG_CT_GET (`conntrack -L`).
public struct ConntrackEntry: Hashable, Sendable, CustomStringConvertible {
    /// CTA_ID: the kernel's id of the entry (used to delete exactly this entry).
    public var id: UInt32
    public var original: ConntrackTuple
    public var reply: ConntrackTuple
    /// CTA_MARK (0 when the kernel sends none).
    public var mark: UInt32
    /// CTA_STATUS (IPS_* bits).
    public var status: UInt32
    /// CTA_TIMEOUT in seconds.
    public var timeoutSeconds: UInt32?
    /// CTA_ZONE (nil = default zone).
    public var zone: UInt16?

    public var description: String {
        "id \(id) \(original) | reply \(reply) mark 0x\(String(mark, radix: 16))"
    }
}

/// The flows of one classifier: client → service, protocol and service (orig destination) port.
public struct ConntrackClassifier: Hashable, Sendable, CustomStringConvertible {
    public var client: IPAddress
    public var service: IPAddress
    public var protocolNumber: UInt8
    public var servicePort: UInt16

    public init(client: IPAddress, service: IPAddress, protocolNumber: UInt8, servicePort: UInt16) {
        self.client = client
        self.service = service
        self.protocolNumber = protocolNumber
        self.servicePort = servicePort
    }

    public var description: String {
        "\(client) → \(service) proto \(protocolNumber) dport \(servicePort)"
    }

    /// True when `entry`'s original direction belongs to this classifier.
    public func matches(_ entry: ConntrackEntry) -> Bool {
        entry.original.source == client && entry.original.destination == service
            && entry.original.protocolNumber == protocolNumber && entry.original.destinationPort == servicePort
    }
}

/// How `ConntrackSocket.deleteUnsteeredEntries` removed the entries.
public enum ConntrackDeleteMethod: Hashable, Sendable {
    /// One IPCTNL_MSG_CT_DELETE with CTA_FILTER + CTA_TUPLE_ORIG + CTA_MARK: the kernel walks
    /// the table once and deletes matches; it does not say how many.
    case kernelFilteredFlush
    /// A dump filtered in the kernel (CTA_FILTER) followed by one delete (tuple + CTA_ID) per entry.
    case dumpAndDelete
}

/// What `ConntrackSocket.deleteUnsteeredEntries` did.
public struct ConntrackDeleteResult: Hashable, Sendable {
    public var method: ConntrackDeleteMethod
    /// Entries deleted; nil for `.kernelFilteredFlush` (the kernel does not report a count).
    public var deleted: Int?

    public init(method: ConntrackDeleteMethod, deleted: Int?) {
        self.method = method
        self.deleted = deleted
    }
}
