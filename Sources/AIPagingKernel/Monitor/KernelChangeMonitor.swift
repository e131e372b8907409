#if canImport(Glibc)
import Glibc
#endif
// Keep this order (CNFTables before CNetlinkRoute): in whole-module (release) builds the first
// module to pull in <sys/socket.h> decides where its enum constants live, and the other order
// hides MSG_DONTWAIT from NFTablesSocket.swift.
import CNFTables
import CAIPagingShim
import CNetlinkRoute
import Synchronization
import AIPagingCore

/// Watches one network namespace for changes to the agent's kernel state made by anyone else:
/// nftables changes to `table inet aipaging` (multicast group `NFNLGRP_NFTABLES`) and tc changes
/// to the agent's qdiscs, classes and filters (`RTNLGRP_TC`). Equivalent to `nft monitor` plus
/// `tc monitor` inside the namespace, filtered.
///
/// **How the agent's own changes are told apart.** The kernel stamps every notification with the
/// netlink port id of the socket whose request caused it (`nlmsg_pid`; nf_tables uses the
/// batch sender's port for every element, set, chain and generation message, rtnetlink the
/// requester's port for qdisc/class/filter messages; verified on this kernel). The monitor is
/// given the port ids of the agent's own nftables and rtnetlink sockets in that namespace and
/// drops their notifications before looking at anything else, so the agent's commits cost it a
/// `recv` and a header read, never a resync. Port id 0 (a change the kernel made by itself) is
/// foreign. Element expiry by kernel timeout sends no notification.
///
/// Foreign notifications that concern the agent's state are collected for `debounce` from the
/// first one (a burst such as `nft -f` becomes one report) and handed to `onChange` on the
/// monitor's own thread; a receive-queue overrun (`ENOBUFS`: notifications were lost, foreign
/// ones may be among them) is reported too, as `lost`. Relevant means: any nftables object of
/// table `inet aipaging`; a tc qdisc, class or filter whose handle or parent has the agent's
/// root major (`a1:`) or a group major (`0x100`–`0xfff0`).
///
/// Kernel state touched: none (two netlink sockets that only listen).
public final class KernelChangeMonitor: Sendable {
    /// One foreign change, as the kernel announced it.
    public struct Change: Sendable, Hashable, CustomStringConvertible {
        public enum Subsystem: String, Sendable { case nftables, tc }
        public var subsystem: Subsystem
        /// `newsetelem`, `delsetelem`, `newtable`, `delqdisc`, `newtclass`, `deltfilter`, ...
        public var operation: String
        /// `inet aipaging lease4`, `ifindex 3 class 100:2 parent 100:1`, ...
        public var object: String
        /// Port id of the socket that made the change (0: the kernel itself).
        public var portID: UInt32
        /// True for nftables changes to the table's schema (table, chain, rule, set) rather than
        /// to elements: the repair has to verify and rebuild the table, not just its elements.
        public var schema: Bool

        public init(subsystem: Subsystem, operation: String, object: String, portID: UInt32, schema: Bool = false) {
            self.subsystem = subsystem
            self.operation = operation
            self.object = object
            self.portID = portID
            self.schema = schema
        }

        public var description: String { "\(subsystem.rawValue) \(operation) \(object) (port \(portID))" }
    }

    /// What happened during one debounce window.
    public struct Report: Sendable {
        /// Distinct changes, in arrival order, at most `maxDetails` of them.
        public var changes: [Change] = []
        /// Foreign notifications counted in the window (with repeats).
        public var count = 0
        /// The processes behind the nftables changes, `name[pid]` from the batch's generation
        /// message (`NFTA_GEN_PROC_NAME`/`PID`), when the kernel named them.
        public var origins: [String] = []
        /// Notifications were lost (receive queue overrun): something may have changed.
        public var lost = false
        public var nftables: Bool { changes.contains { $0.subsystem == .nftables } || lost }
        public var tc: Bool { changes.contains { $0.subsystem == .tc } || lost }
        /// Whether the table's schema (not just its elements) may have changed.
        public var schema: Bool { changes.contains(where: \.schema) || lost }
        public static let maxDetails = 16
        public init() {}
    }

    public let namespace: NetworkNamespace
    /// The listening sockets' own port ids (diagnostics).
    public let nftablesPortID: UInt32
    public let routePortID: UInt32
    /// Datagrams the monitor has read (its own changes are not among them: the kernel drops
    /// them before they are queued).
    public var datagramsReceived: Int { received.value.load(ordering: .relaxed) }
    private let received = SharedCounter()
    private let thread: Mutex<pthread_t?>
    private let stopWrite: Int32
    private let stopped = Atomic<Bool>(false)

    /// Subscribes inside `namespace` and starts the monitor thread. `ignoring`: the port ids of
    /// the agent's own sockets there (`NFTablesSocket.portID`, `RouteSocket.portID`).
    /// Needs CAP_NET_ADMIN (and CAP_SYS_ADMIN to enter a named namespace), like the agent's
    /// other netlink sockets.
    public init(namespace: NetworkNamespace, ignoring ownPortIDs: Set<UInt32>, debounce: Duration = .milliseconds(50),
                onChange: @escaping @Sendable (Report) -> Void) throws(KernelError) {
        self.namespace = namespace
        // The agent's own large transactions (a cold start reinstalls every lease) queue one
        // notification per element at once; each costs ~1 kB of receive buffer (skb truesize).
        // A deep queue keeps them from overrunning it while this thread drains (an overrun is
        // reported as `lost` and costs a full resync); the memory is used only while queued.
        let queue: Int32 = 32 << 20
        let nftFD = try openNetlinkSocket(netlinkProtocol: NETLINK_NETFILTER, in: namespace, name: "NETLINK_NETFILTER monitor",
                                          receiveBufferBytes: queue)
        let routeFD: Int32
        do {
            routeFD = try openNetlinkSocket(netlinkProtocol: NETLINK_ROUTE, in: namespace, name: "NETLINK_ROUTE monitor",
                                            receiveBufferBytes: queue)
        } catch {
            close(nftFD)
            throw error
        }
        func join(_ fd: Int32, _ group: UInt32, _ what: String) throws(KernelError) {
            var g = group
            if setsockopt(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g, socklen_t(MemoryLayout<UInt32>.size)) != 0 {
                let err = errno
                close(nftFD)
                close(routeFD)
                throw KernelError("setsockopt(NETLINK_ADD_MEMBERSHIP, \(what))", errno: err,
                                  detail: "subscribing to kernel change notifications in \(namespace) needs CAP_NET_ADMIN")
            }
        }
        try join(nftFD, UInt32(NFNLGRP_NFTABLES.rawValue), "NFNLGRP_NFTABLES")
        try join(routeFD, UInt32(RTNLGRP_TC.rawValue), "RTNLGRP_TC")
        nftablesPortID = netlinkPortID(fd: nftFD)
        routePortID = netlinkPortID(fd: routeFD)
        // The agent's own changes are dropped by the kernel (a socket filter on nlmsg_pid), so
        // each of them costs no wakeup of this thread and no receive-queue space; the check
        // by port id below stays, for a kernel that refuses the filter.
        let ownPorts = Array(ownPortIDs.prefix(32))
        for fd in [nftFD, routeFD] where !ownPorts.isEmpty {
            _ = ownPorts.withUnsafeBufferPointer { aip_netlink_drop_ports(fd, $0.baseAddress, Int32($0.count)) }
        }

        var pipeFDs: [Int32] = [-1, -1]
        if pipe(&pipeFDs) != 0 {
            let err = errno
            close(nftFD)
            close(routeFD)
            throw KernelError("pipe", errno: err)
        }
        for fd in pipeFDs { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        stopWrite = pipeFDs[1]
        let loop = MonitorLoop(nftFD: nftFD, routeFD: routeFD, stopRead: pipeFDs[0], ignoring: ownPortIDs, received: received,
                               debounceNs: UInt64(debounce.components.seconds) * 1_000_000_000
                                   + UInt64(debounce.components.attoseconds / 1_000_000_000),
                               onChange: onChange)
        let ctx = Unmanaged.passRetained(loop)
        var t = pthread_t()
        let rc = pthread_create(&t, nil, { raw in
            let loop = Unmanaged<MonitorLoop>.fromOpaque(raw!).takeRetainedValue()
            loop.run()
            return nil
        }, ctx.toOpaque())
        if rc != 0 {
            ctx.release()
            close(nftFD)
            close(routeFD)
            close(pipeFDs[0])
            close(pipeFDs[1])
            throw KernelError("pthread_create", errno: rc)
        }
        thread = Mutex(t)
    }

    /// Stops the thread and closes the sockets; `onChange` is not called once this returns.
    /// Idempotent.
    public func stop() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        var b: UInt8 = 1
        _ = write(stopWrite, &b, 1)
        if let t = thread.withLock({ t -> pthread_t? in let v = t; t = nil; return v }) {
            pthread_join(t, nil)
        }
        close(stopWrite)
    }

    deinit { stop() }

    // MARK: classification (pure, unit-tested)

    /// The foreign, relevant changes in one datagram from the nftables group.
    static func nftablesChanges(in datagram: UnsafeRawBufferPointer, ignoring own: Set<UInt32>,
                                origins: inout [UInt32: String]) -> [Change] {
        var out: [Change] = []
        try? NetlinkWire.forEachMessage(in: datagram) { m in
            guard !own.contains(m.portID), m.type >> 8 == UInt16(NFNL_SUBSYS_NFTABLES), m.payload.count >= 4 else { return }
            let msg = UInt32(m.type & 0xff)
            let family = m.payload[0]
            let attrs = UnsafeRawBufferPointer(rebasing: m.payload[4...])
            if msg == NFT_MSG_NEWGEN.rawValue {
                var pid: UInt32?
                var name: String?
                NetlinkWire.forEachAttribute(in: attrs) { type, value in
                    if type == UInt16(NFTA_GEN_PROC_PID.rawValue) { pid = NetlinkWire.be32(value) }
                    if type == UInt16(NFTA_GEN_PROC_NAME.rawValue) { name = NetlinkWire.string(value) }
                }
                if let name { origins[m.portID] = pid.map { "\(name)[\($0)]" } ?? name }
                return
            }
            // Every nf_tables object message carries its table's name as attribute 1
            // (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_SET_TABLE, NFTA_SET_ELEM_LIST_TABLE, ...).
            var table: String?
            var name: String?
            let nameAttr: UInt16
            switch msg {
            case NFT_MSG_NEWCHAIN.rawValue, NFT_MSG_DELCHAIN.rawValue: nameAttr = UInt16(NFTA_CHAIN_NAME.rawValue)
            case NFT_MSG_NEWRULE.rawValue, NFT_MSG_DELRULE.rawValue: nameAttr = UInt16(NFTA_RULE_CHAIN.rawValue)
            case NFT_MSG_NEWSET.rawValue, NFT_MSG_DELSET.rawValue: nameAttr = UInt16(NFTA_SET_NAME.rawValue)
            case NFT_MSG_NEWSETELEM.rawValue, NFT_MSG_DELSETELEM.rawValue: nameAttr = UInt16(NFTA_SET_ELEM_LIST_SET.rawValue)
            default: nameAttr = 0
            }
            NetlinkWire.forEachAttribute(in: attrs) { type, value in
                if type == 1 { table = NetlinkWire.string(value) }
                if nameAttr != 0, type == nameAttr { name = NetlinkWire.string(value) }
            }
            guard family == AIPagingNFT.family, table == AIPagingNFT.tableName else { return }
            let op = nftOperationName(msg)
            let isElement = msg == NFT_MSG_NEWSETELEM.rawValue || msg == NFT_MSG_DELSETELEM.rawValue
            out.append(Change(subsystem: .nftables, operation: op,
                              object: "inet \(AIPagingNFT.tableName)" + (name.map { " \($0)" } ?? ""),
                              portID: m.portID, schema: !isElement))
        }
        return out
    }

    /// The foreign, relevant changes in one datagram from the tc group.
    static func tcChanges(in datagram: UnsafeRawBufferPointer, ignoring own: Set<UInt32>) -> [Change] {
        var out: [Change] = []
        try? NetlinkWire.forEachMessage(in: datagram) { m in
            guard !own.contains(m.portID), m.payload.count >= 20 else { return }
            let op: String
            switch Int32(m.type) {
            case Int32(RTM_NEWQDISC): op = "newqdisc"
            case Int32(RTM_DELQDISC): op = "delqdisc"
            case Int32(RTM_NEWTCLASS): op = "newtclass"
            case Int32(RTM_DELTCLASS): op = "deltclass"
            case Int32(RTM_NEWTFILTER): op = "newtfilter"
            case Int32(RTM_DELTFILTER): op = "deltfilter"
            default: return
            }
            let ifindex = m.payload.loadUnaligned(fromByteOffset: 4, as: Int32.self)
            let handle = m.payload.loadUnaligned(fromByteOffset: 8, as: UInt32.self)
            let parent = m.payload.loadUnaligned(fromByteOffset: 12, as: UInt32.self)
            guard isAgentMajor(handle) || isAgentMajor(parent) else { return }
            out.append(Change(subsystem: .tc, operation: op,
                              object: "ifindex \(ifindex) handle \(tcHandle(handle)) parent \(tcHandle(parent))",
                              portID: m.portID))
        }
        return out
    }

    /// Whether a tc handle belongs to the agent's layout: root `a1:` or a group qdisc `G:`.
    static func isAgentMajor(_ handle: UInt32) -> Bool {
        guard handle != 0xffff_ffff else { return false }   // TC_H_ROOT
        let major = UInt16(handle >> 16)
        return major == Layout.rootMajor || (Layout.firstGroupMajor...Layout.lastGroupMajor).contains(major)
    }

    static func tcHandle(_ h: UInt32) -> String {
        h == 0xffff_ffff ? "root" : "\(String(h >> 16, radix: 16)):\(String(h & 0xffff, radix: 16))"
    }

    static func nftOperationName(_ msg: UInt32) -> String {
        switch msg {
        case NFT_MSG_NEWTABLE.rawValue: return "newtable"
        case NFT_MSG_DELTABLE.rawValue: return "deltable"
        case NFT_MSG_NEWCHAIN.rawValue: return "newchain"
        case NFT_MSG_DELCHAIN.rawValue: return "delchain"
        case NFT_MSG_NEWRULE.rawValue: return "newrule"
        case NFT_MSG_DELRULE.rawValue: return "delrule"
        case NFT_MSG_NEWSET.rawValue: return "newset"
        case NFT_MSG_DELSET.rawValue: return "delset"
        case NFT_MSG_NEWSETELEM.rawValue: return "newsetelem"
        case NFT_MSG_DELSETELEM.rawValue: return "delsetelem"
        default: return "nft_msg_\(msg)"
        }
    }
}

/// A count two threads share.
final class SharedCounter: Sendable {
    let value = Atomic<Int>(0)
}

/// The monitor thread's state. Owned by that thread alone: created before it starts, handed
/// over through `pthread_create`, and never touched by any other thread afterwards.
private final class MonitorLoop {
    let nftFD: Int32
    let routeFD: Int32
    let stopRead: Int32
    let own: Set<UInt32>
    let debounceNs: UInt64
    let onChange: @Sendable (KernelChangeMonitor.Report) -> Void
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 8)
    var report = KernelChangeMonitor.Report()
    var windowEnd: UInt64?
    var origins: [UInt32: String] = [:]

    let received: SharedCounter

    init(nftFD: Int32, routeFD: Int32, stopRead: Int32, ignoring own: Set<UInt32>, received: SharedCounter, debounceNs: UInt64,
         onChange: @escaping @Sendable (KernelChangeMonitor.Report) -> Void) {
        self.received = received
        self.nftFD = nftFD
        self.routeFD = routeFD
        self.stopRead = stopRead
        self.own = own
        self.debounceNs = debounceNs
        self.onChange = onChange
    }

    deinit {
        close(nftFD)
        close(routeFD)
        close(stopRead)
        buffer.deallocate()
    }

    func run() {
        var fds = [pollfd(fd: stopRead, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: nftFD, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: routeFD, events: Int16(POLLIN), revents: 0)]
        while true {
            var timeout: Int32 = -1
            if let end = windowEnd {
                let now = aip_monotonic_ns()
                timeout = now >= end ? 0 : Int32(min((end - now + 999_999) / 1_000_000, 60_000))
            }
            for i in fds.indices { fds[i].revents = 0 }
            let n = poll(&fds, nfds_t(fds.count), timeout)
            if n < 0 && errno != EINTR { return }
            if fds[0].revents != 0 { return }
            if fds[1].revents != 0 { drain(nftFD, nftables: true) }
            if fds[2].revents != 0 { drain(routeFD, nftables: false) }
            if let end = windowEnd, aip_monotonic_ns() >= end {
                var r = report
                r.origins = Array(Set(r.changes.compactMap { origins[$0.portID] })).sorted()
                report = KernelChangeMonitor.Report()
                windowEnd = nil
                origins = [:]
                onChange(r)
            }
        }
    }

    /// Reads every queued datagram without blocking.
    func drain(_ fd: Int32, nftables: Bool) {
        while true {
            let n = recv(fd, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT))
            if n < 0 {
                switch errno {
                case EINTR: continue
                case ENOBUFS: note([], lost: true); continue
                default: return   // EAGAIN: empty
                }
            }
            if n == 0 { return }
            received.value.add(1, ordering: .relaxed)
            let datagram = UnsafeRawBufferPointer(start: buffer.baseAddress, count: n)
            let changes = nftables
                ? KernelChangeMonitor.nftablesChanges(in: datagram, ignoring: own, origins: &origins)
                : KernelChangeMonitor.tcChanges(in: datagram, ignoring: own)
            if !changes.isEmpty { note(changes, lost: false) }
        }
    }

    func note(_ changes: [KernelChangeMonitor.Change], lost: Bool) {
        if windowEnd == nil { windowEnd = aip_monotonic_ns() + debounceNs }
        report.count += changes.count
        report.lost = report.lost || lost
        for c in changes where report.changes.count < KernelChangeMonitor.Report.maxDetails && !report.changes.contains(c) {
            report.changes.append(c)
        }
        // Keep the schema flag even when the details are full.
        if report.changes.count >= KernelChangeMonitor.Report.maxDetails, let s = changes.first(where: \.schema),
           !report.changes.contains(where: \.schema) {
            report.changes[report.changes.count - 1] = s
        }
    }
}
