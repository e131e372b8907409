/// One entry of the durable lease journal. The journal is the agent's memory across restarts: a
/// lease is acknowledged only after its record is durable, and on start the agent rebuilds its
/// lease table from the journal and makes the kernel match it.
public enum JournalRecord: Equatable, Sendable {
    /// A live lease as it is now (admitted, renewed, relocated, draining).
    case lease(Lease)
    /// A lease ended (released, expired or revoked): it is forgotten, but its generation is kept
    /// so a replay of an old COMMIT is still refused after a restart.
    case ended(id: LeaseID, state: LeaseState, generation: UInt64, at: WallTime, mark: UInt32, point: String)
    /// Where the mark rotation of an enforcement point continues (written at compaction).
    case cursor(point: String, nextSlot: UInt32)
    /// A lease whose `lease` record was written ahead of its kernel install, and whose install
    /// then failed: the admission is undone as if it never was (no tombstone; a tombstone the id
    /// had before comes back). The lease service writes a batch's records while the kernel is
    /// being changed, so their fdatasync overlaps the kernel work; this record corrects them.
    case withdrawn(id: LeaseID)

    public struct DecodeError: Error, Sendable, CustomStringConvertible, Equatable {
        public var description: String
    }

    /// Canonical JSON of the record. Boot-clock instants are kept with the boot they belong to
    /// (`boot_id`); wall-clock equivalents are kept too, for a restart after a reboot.
    public func json(bootID: String, clock: ClockReading) -> JSON {
        switch self {
        case .lease(let l):
            var o = JSON.Object()
            o["op"] = "lease"
            o["boot_id"] = .string(bootID)
            o["request"] = l.request.json
            o["state"] = .string(l.state.rawValue)
            o["point"] = .string(l.enforcementPoint)
            o["admitted_wall_ns"] = .int(l.admittedAt.wall.nanosecondsSinceEpoch)
            o["admitted_boot_ns"] = .int(l.admittedAt.boot.nanoseconds)
            o["renewed_wall_ns"] = .int(l.renewedAt.wall.nanosecondsSinceEpoch)
            o["renewed_boot_ns"] = .int(l.renewedAt.boot.nanoseconds)
            o["deadline_boot_ns"] = .int(l.deadline.nanoseconds)
            o["expires_wall_ns"] = .int(l.expiresAt.nanosecondsSinceEpoch)
            o["mark"] = .int(l.mark)
            o["interface"] = .string(l.qosClass.interface)
            o["class_major"] = .int(l.qosClass.major)
            o["class_minor"] = .int(l.qosClass.minor)
            if let d = l.drainEndsAt {
                o["drain_end_boot_ns"] = .int(d.nanoseconds)
                o["drain_end_wall_ns"] = .int(clock.wall(at: d).nanosecondsSinceEpoch)
            }
            if let r = l.replacedBy { o["replaced_by"] = .string(r) }
            if let s = l.switchedAt {
                o["switched_boot_ns"] = .int(s.nanoseconds)
                o["switched_wall_ns"] = .int(clock.wall(at: s).nanosecondsSinceEpoch)
            }
            return .object(o)
        case .cursor(let point, let next):
            return ["op": "cursor", "point": .string(point), "next_slot": .int(next)]
        case .ended(let id, let state, let g, let at, let mark, let point):
            return ["op": "ended", "lease_id": .string(id), "state": .string(state.rawValue), "generation": .int(g),
                    "at_wall_ns": .int(at.nanosecondsSinceEpoch), "mark": .int(mark), "point": .string(point)]
        case .withdrawn(let id):
            return ["op": "withdrawn", "lease_id": .string(id)]
        }
    }

    /// Decodes a record written by `json(bootID:clock:)`. Instants of another boot are moved onto
    /// this boot's clock through their wall-clock times (`clock` is now).
    public static func decode(_ v: JSON, bootID: String, clock: ClockReading) throws(DecodeError) -> JournalRecord {
        func fail(_ m: String) -> DecodeError { DecodeError(description: "journal record: \(m)") }
        guard let o = v.objectValue, let op = o["op"]?.stringValue else { throw fail("not an object with op") }
        func int(_ k: String) throws(DecodeError) -> Int64 {
            guard let x = o[k]?.int64Value else { throw fail("\(op): \(k) missing") }
            return x
        }
        func string(_ k: String) throws(DecodeError) -> String {
            guard let x = o[k]?.stringValue else { throw fail("\(op): \(k) missing") }
            return x
        }
        switch op {
        case "cursor":
            return .cursor(point: try string("point"), nextSlot: UInt32(truncatingIfNeeded: try int("next_slot")))
        case "ended":
            guard let state = LeaseState(rawValue: try string("state")) else { throw fail("ended: bad state") }
            return .ended(id: try string("lease_id"), state: state, generation: UInt64(max(0, try int("generation"))),
                          at: WallTime(nanosecondsSinceEpoch: try int("at_wall_ns")), mark: UInt32(truncatingIfNeeded: try int("mark")),
                          point: try string("point"))
        case "withdrawn":
            return .withdrawn(id: try string("lease_id"))
        case "lease":
            guard let reqJSON = o["request"] else { throw fail("lease: request missing") }
            let request: CommitRequest
            do { request = try CommitDecoder.decode(reqJSON) } catch { throw fail("lease: request: \(error.message)") }
            guard let state = LeaseState(rawValue: try string("state")) else { throw fail("lease: bad state") }
            let sameBoot = o["boot_id"]?.stringValue == bootID
            /// A boot-clock instant of the record, or (another boot) its wall time moved onto ours.
            func instant(boot bootKey: String, wall wallKey: String) throws(DecodeError) -> BootInstant {
                if sameBoot { return BootInstant(nanoseconds: UInt64(max(0, try int(bootKey)))) }
                return clock.boot(at: WallTime(nanosecondsSinceEpoch: try int(wallKey)))
            }
            let admitted = ClockReading(boot: sameBoot ? BootInstant(nanoseconds: UInt64(max(0, try int("admitted_boot_ns")))) : clock.boot,
                                        wall: WallTime(nanosecondsSinceEpoch: try int("admitted_wall_ns")))
            let renewed = ClockReading(boot: sameBoot ? BootInstant(nanoseconds: UInt64(max(0, try int("renewed_boot_ns")))) : clock.boot,
                                       wall: WallTime(nanosecondsSinceEpoch: try int("renewed_wall_ns")))
            let expires = WallTime(nanosecondsSinceEpoch: try int("expires_wall_ns"))
            let deadline = try instant(boot: "deadline_boot_ns", wall: "expires_wall_ns")
            let cls = QoSClassRef(interface: try string("interface"), major: UInt16(truncatingIfNeeded: try int("class_major")),
                                  minor: UInt16(truncatingIfNeeded: try int("class_minor")))
            var l = Lease(request: request, state: state, enforcementPoint: try string("point"), admittedAt: admitted,
                          deadline: deadline, expiresAt: expires, mark: UInt32(truncatingIfNeeded: try int("mark")), qosClass: cls)
            l.renewedAt = renewed
            if o["drain_end_boot_ns"] != nil { l.drainEndsAt = try instant(boot: "drain_end_boot_ns", wall: "drain_end_wall_ns") }
            l.replacedBy = o["replaced_by"]?.stringValue
            if o["switched_boot_ns"] != nil { l.switchedAt = try instant(boot: "switched_boot_ns", wall: "switched_wall_ns") }
            return .lease(l)
        default:
            throw fail("unknown op \(op)")
        }
    }
}

extension LeaseTable {
    /// Rebuilds the table from journal records (in journal order): the last record of a lease
    /// wins; leases whose deadline passed while the agent was down are dropped (their generation
    /// kept); the mark rotation continues after the highest mark seen; a `withdrawn` lease is
    /// forgotten with the tombstone its id had before its `lease` record back.
    public static func replay(_ records: [JournalRecord], now: BootInstant, groupSize: Int) -> (LeaseTable, dropped: [Lease]) {
        var latest: [LeaseID: Lease] = [:]
        var order: [LeaseID] = []
        var ended: [LeaseID: (UInt64, WallTime)] = [:]
        /// The tombstone a `lease` record cleared, for a `withdrawn` that follows it.
        var cleared: [LeaseID: (UInt64, WallTime)] = [:]
        var maxSlot: [String: UInt32] = [:]
        func seeMark(_ point: String, _ mark: UInt32) {
            let slot = mark & Layout.maxSlot
            maxSlot[point] = max(maxSlot[point] ?? 0, slot)
        }
        for r in records {
            switch r {
            case .lease(let l):
                if latest.updateValue(l, forKey: l.id) == nil { order.append(l.id) }
                if let t = ended.removeValue(forKey: l.id) { cleared[l.id] = t }
                seeMark(l.enforcementPoint, l.mark)
            case .ended(let id, _, let g, let at, let mark, let point):
                // Retention counts from the later of the end and the lease's expiry.
                var from = at
                if let l = latest[id], at < l.expiresAt { from = l.expiresAt }
                if let (pg, pf) = ended[id], pg > g || (pg == g && from < pf) { ended[id] = (pg, pf) } else { ended[id] = (g, from) }
                latest[id] = nil
                cleared[id] = nil
                if mark != 0 { seeMark(point, mark) }
            case .withdrawn(let id):
                latest[id] = nil
                ended[id] = cleared.removeValue(forKey: id)
            case .cursor(let point, let next):
                maxSlot[point] = max(maxSlot[point] ?? 0, next > 0 ? next - 1 : 0)
            }
        }
        var table = LeaseTable(groupSize: groupSize)
        var dropped: [Lease] = []
        for (id, (g, from)) in ended { table.remember(id, generation: g, retainedFrom: from) }
        for id in order {
            guard let l = latest[id] else { continue }
            if l.nextDeadline <= now {
                // Over while the agent was down (a drain that ended released the lease).
                dropped.append(l)
                if (table.endedGenerations[id] ?? 0) < l.request.generation {
                    table.remember(id, generation: l.request.generation, retainedFrom: l.expiresAt)
                }
                continue
            }
            var live = l
            if live.state == .admitted { live.state = .active }
            table.upsert(live)
        }
        for (point, slot) in maxSlot { table.setNextSlot(point: point, slot >= Layout.maxSlot ? 1 : slot + 1) }
        return (table, dropped)
    }
}
