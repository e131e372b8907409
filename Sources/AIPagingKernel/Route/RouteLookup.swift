#if canImport(Glibc)
import Glibc
#endif
import CNetlinkRoute
import AIPagingCore

/// The kernel's answer to "which interface routes to this address" (RTM_GETROUTE).
public struct RouteLookupResult: Hashable, Sendable, CustomStringConvertible {
    public var destination: IPAddress
    /// Output interface (RTA_OIF).
    public var ifindex: Int32
    public var interfaceName: String
    /// Next hop when the destination is not on-link (RTA_GATEWAY).
    public var gateway: IPAddress?
    /// Source address the kernel would pick (RTA_PREFSRC).
    public var preferredSource: IPAddress?
    public var type: RouteType
    /// Routing table the route came from (RTA_TABLE).
    public var table: UInt32

    public var description: String {
        var s = "\(destination) dev \(interfaceName) (\(ifindex))"
        if let gateway { s += " via \(gateway)" }
        if let preferredSource { s += " src \(preferredSource)" }
        if type != .unicast { s += " type \(type)" }
        return s
    }
}

/// `rtm_type` of a route.
public enum RouteType: Hashable, Sendable, CustomStringConvertible {
    case unicast, local, broadcast, multicast
    case other(UInt8)

    init(_ raw: UInt8) {
        switch Int(raw) {
        case Int(RTN_UNICAST): self = .unicast
        case Int(RTN_LOCAL): self = .local
        case Int(RTN_BROADCAST): self = .broadcast
        case Int(RTN_MULTICAST): self = .multicast
        default: self = .other(raw)
        }
    }

    public var description: String {
        switch self {
        case .unicast: return "unicast"
        case .local: return "local"
        case .broadcast: return "broadcast"
        case .multicast: return "multicast"
        case .other(let v): return "type \(v)"
        }
    }
}

extension RouteSocket {
    /// The index of interface `name` in this socket's namespace (RTM_GETLINK with IFLA_IFNAME).
    ///
    /// Equivalent to `ip link show NAME` (the number before the name).
    /// - Throws: `KernelError` ENODEV when there is no such interface.
    public func interfaceIndex(named name: String) throws(KernelError) -> Int32 {
        try link(index: 0, name: name).index
    }

    /// The name of interface `index` in this socket's namespace (RTM_GETLINK).
    ///
    /// Equivalent to `ip link show` and reading the name of entry `index`. `if_indextoname(3)`
    /// would answer for the calling thread's namespace, not this socket's.
    public func interfaceName(index: Int32) throws(KernelError) -> String {
        try link(index: index, name: nil).name
    }

    /// Which interface routes to `address` (RTM_GETROUTE in the main FIB lookup, v4 or v6),
    /// plus the interface's name (a second request, RTM_GETLINK).
    ///
    /// Equivalent to `ip route get ADDRESS`.
    /// - Throws: `KernelError` ENETUNREACH when no route covers the address (also EHOSTUNREACH,
    ///   EACCES or EINVAL for unreachable, prohibit and blackhole routes).
    public func route(to address: IPAddress) throws(KernelError) -> RouteLookupResult {
        let family: Int32 = address.family == .ipv4 ? AF_INET : AF_INET6
        let request = try NLMessage(type: Int32(RTM_GETROUTE), flags: 0)
        var rtm = rtmsg()
        rtm.rtm_family = UInt8(family)
        rtm.rtm_dst_len = address.family == .ipv4 ? 32 : 128
        try request.appendHeader(rtm)
        try request.put(Int32(RTA_DST.rawValue), bytes: address.bytes)
        var result: RouteLookupResult?
        let ns = namespace
        try withSocket { (s) throws(KernelError) in
            try s.request(request, operation: "RTM_GETROUTE", doing: "looking up the route to \(address) in \(ns)",
                          hint: { err in
                switch err {
                case ENETUNREACH: return "no route to \(address) in namespace \(ns): add a route (or a default route) towards the anchor, and check the interface is up"
                case EHOSTUNREACH: return "the route to \(address) is of type unreachable"
                case EACCES: return "the route to \(address) is of type prohibit"
                case EINVAL: return "the route to \(address) may be a blackhole route"
                default: return nil
                }
            }) { (m) throws(KernelError) in
                guard m.type == UInt16(RTM_NEWROUTE), m.payload.count >= MemoryLayout<rtmsg>.size else { return }
                let type = m.payload[7]
                var r = RouteLookupResult(destination: address, ifindex: 0, interfaceName: "", gateway: nil,
                                          preferredSource: nil, type: RouteType(type), table: UInt32(m.payload[4]))
                NetlinkWire.forEachAttribute(in: UnsafeRawBufferPointer(rebasing: m.payload[MemoryLayout<rtmsg>.size...])) { t, v in
                    switch Int(t) {
                    case Int(RTA_OIF.rawValue): r.ifindex = Int32(bitPattern: NetlinkWire.u32(v) ?? 0)
                    case Int(RTA_GATEWAY.rawValue): r.gateway = NetlinkWire.address(v)
                    case Int(RTA_PREFSRC.rawValue): r.preferredSource = NetlinkWire.address(v)
                    case Int(RTA_TABLE.rawValue): r.table = NetlinkWire.u32(v) ?? r.table
                    default: break
                    }
                }
                result = r
            }
        }
        guard var found = result, found.ifindex > 0 else {
            throw KernelError("RTM_GETROUTE", errno: ENETUNREACH,
                              detail: "the kernel returned no output interface for \(address) in \(ns)")
        }
        found.interfaceName = try interfaceName(index: found.ifindex)
        return found
    }

    private func link(index: Int32, name: String?) throws(KernelError) -> (index: Int32, name: String) {
        let request = try NLMessage(type: Int32(RTM_GETLINK), flags: 0)
        var ifi = ifinfomsg()
        ifi.ifi_family = UInt8(AF_UNSPEC)
        ifi.ifi_index = index
        try request.appendHeader(ifi)
        if let name {
            guard !name.isEmpty, name.utf8.count < 16 else {
                throw KernelError("RTM_GETLINK", errno: EINVAL, detail: "interface name \"\(name)\" must be 1…15 bytes")
            }
            try request.put(Int32(IFLA_IFNAME), string: name)
        }
        try request.put(Int32(IFLA_EXT_MASK), u32: UInt32(RTEXT_FILTER_SKIP_STATS))
        var found: (Int32, String)?
        let ns = namespace
        let what = name.map { "interface \"\($0)\"" } ?? "interface index \(index)"
        try withSocket { (s) throws(KernelError) in
            try s.request(request, operation: "RTM_GETLINK", doing: "looking up \(what) in \(ns)", hint: { err in
                err == ENODEV ? "no \(what) in namespace \(ns); check `ip -n NS link`" : nil
            }) { (m) throws(KernelError) in
                guard m.type == UInt16(RTM_NEWLINK), m.payload.count >= MemoryLayout<ifinfomsg>.size else { return }
                let idx = m.payload.loadUnaligned(fromByteOffset: 4, as: Int32.self)
                var ifname = ""
                NetlinkWire.forEachAttribute(in: UnsafeRawBufferPointer(rebasing: m.payload[MemoryLayout<ifinfomsg>.size...])) { t, v in
                    if Int(t) == Int(IFLA_IFNAME) { ifname = NetlinkWire.string(v) }
                }
                found = (idx, ifname)
            }
        }
        guard let found else {
            throw KernelError("RTM_GETLINK", errno: ENODEV, detail: "no reply for \(what) in \(ns)")
        }
        return found
    }
}
