extension PointPlan {
    /// Number of kernel changes (nftables element changes and tc operations) in the plan.
    public var changeCount: Int { nft.count + tcBefore.count + tcAfter.count }

    /// The plan as short lines for the log, one per change, in the order they are applied, at
    /// most `limit` of them followed by "... and N more". `lease` names the lease that owns a
    /// mark (nil: no live lease owns it, the change removes foreign or stale state).
    ///
    ///     add steering 198.18.1.2 -> 198.18.100.10 udp/7000 mark 0xa1000001 (lease L1)
    ///     delete steering 198.18.4.2 -> 198.18.100.10 udp/7000 mark 0xa1000777 (no lease)
    ///     add class 100:2 on r-edge (lease L1)
    public func describedChanges(limit: Int = 12, lease: (UInt32) -> String? = { _ in nil }) -> [String] {
        func owner(_ mark: UInt32) -> String { lease(mark).map { "(lease \($0))" } ?? "(no lease)" }
        func hex(_ v: UInt32) -> String { "0x" + String(v, radix: 16) }
        func cls(_ cid: UInt32) -> String { "\(String(cid >> 16, radix: 16)):\(String(cid & 0xffff, radix: 16))" }
        func tcLine(_ c: TCChange) -> String {
            switch c {
            case .addSkeleton(let i, let cap): return "add HTB root a1: on \(i) (capacity \(cap) kbit/s)"
            case .setCapacity(let i, let cap): return "set capacity of \(i) to \(cap) kbit/s"
            case .removeSkeleton(let i): return "remove HTB root a1: from \(i)"
            case .addGroup(let i, let g, let rate, _, let p): return "add group a1:\(String(g, radix: 16)) on \(i) (rate \(rate) kbit/s, prio \(p))"
            case .changeGroup(let i, let g, let rate, _, let p): return "change group a1:\(String(g, radix: 16)) on \(i) (rate \(rate) kbit/s, prio \(p))"
            case .deleteGroup(let i, let g): return "delete group a1:\(String(g, radix: 16)) on \(i)"
            case .addLeaf(let i, let cid, let rate, let ceil, _): return "add class \(cls(cid)) on \(i) (rate \(rate) ceil \(ceil) kbit/s)"
            case .changeLeaf(let i, let cid, let rate, let ceil, _): return "change class \(cls(cid)) on \(i) (rate \(rate) ceil \(ceil) kbit/s)"
            case .deleteLeaf(let i, let cid): return "delete class \(cls(cid)) on \(i)"
            }
        }
        func nftLine(_ c: NFTChange) -> String {
            switch c {
            case .addSteer(let k, let m, _): return "add steering \(k) mark \(hex(m)) \(owner(m))"
            case .deleteSteer(let k, let m): return "delete steering \(k) mark \(hex(m)) \(owner(m))"
            case .addAnchor(let m, let a, let p, _): return "add anchor \(hex(m)) -> \(a.bracketed):\(p) \(owner(m))"
            case .deleteAnchor(let m, let a, let p): return "delete anchor \(hex(m)) -> \(a.bracketed):\(p) \(owner(m))"
            case .addQoS(let m, let cid, _): return "add qos \(hex(m)) -> class \(cls(cid)) \(owner(m))"
            case .deleteQoS(let m, let cid): return "delete qos \(hex(m)) -> class \(cls(cid)) \(owner(m))"
            }
        }
        var lines: [String] = []
        lines.reserveCapacity(min(limit, changeCount))
        let total = changeCount
        for c in tcBefore where lines.count < limit { lines.append(tcLine(c)) }
        for c in nft where lines.count < limit { lines.append(nftLine(c)) }
        for c in tcAfter where lines.count < limit { lines.append(tcLine(c)) }
        if total > lines.count { lines.append("... and \(total - lines.count) more") }
        return lines
    }
}

extension IPAddress {
    /// The address as it goes before `:port` (IPv6 in brackets).
    var bracketed: String {
        if case .v6 = self { return "[\(description)]" }
        return description
    }
}
