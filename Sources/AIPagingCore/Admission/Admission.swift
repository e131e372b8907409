/// What admission needs to know besides the request and the lease table.
public struct AdmissionContext: Sendable {
    public var now: ClockReading
    public var policy: Policy
    /// Enforcement points by name with their guaranteed-rate capacity (kbit/s).
    public var capacityKbit: [String: UInt64]
    /// The enforcement point a request without `enforcement_point` goes to.
    public var defaultPoint: String
    /// The interface of the enforcement point that routes to the anchor (resolved by the
    /// kernel adapter before admission; admission itself does no I/O).
    public var anchorInterface: String

    public init(now: ClockReading, policy: Policy, capacityKbit: [String: UInt64], defaultPoint: String, anchorInterface: String) {
        self.now = now
        self.policy = policy
        self.capacityKbit = capacityKbit
        self.defaultPoint = defaultPoint
        self.anchorInterface = anchorInterface
    }
}

/// The outcome of admitting a request into the table (before its kernel state exists).
public struct Admission: Sendable {
    public enum Kind: Sendable, Equatable {
        /// A new lease.
        case new
        /// PUT of a live lease id: a new deadline, maybe new rates.
        case renewal(previous: Lease)
        /// A make-before-break relocation of `old` (now draining).
        case relocation(old: LeaseID)
    }

    public var kind: Kind
    public var lease: Lease
    /// Restores the table exactly as it was before this admission.
    public var undo: LeaseTable.Undo
}

extension LeaseTable {
    /// Before-images of what an operation changed, so it can be rolled back if the kernel
    /// refuses the new state.
    public struct Undo: Sendable {
        var leases: [(LeaseID, Lease?)] = []
        var endedGenerations: [(LeaseID, UInt64?)] = []
        var relocationLogs: [(AISI, [BootInstant]?)] = []
        /// Before `allocateMark`: the point's slot cursor and the deadline bucket's block.
        var marks: [(String, UInt32, UInt64, MarkBlock?)] = []

        public init() {}
        /// Ids whose records the operation touched (for planning the kernel change).
        public var touchedLeaseIDs: [LeaseID] { leases.map(\.0) }
    }

    public mutating func rollback(_ undo: Undo) {
        for (id, before) in undo.leases.reversed() {
            if let before { upsert(before) } else { remove(id) }
        }
        for (id, g) in undo.endedGenerations.reversed() { restoreEndedGeneration(id, g) }
        for (aisi, log) in undo.relocationLogs.reversed() { setRelocationLog(aisi: aisi, log) }
        for (point, slot, bucket, block) in undo.marks.reversed() {
            restoreMarkAllocation(point: point, nextSlot: slot, bucket: bucket, block: block)
        }
    }

    /// Admits a COMMIT: policy (ttl, anchor catalog, drain), replay, conflicts, relocation
    /// rules, capacity, and allocation of a mark and an HTB class. On success the table holds
    /// the lease in state `admitted` (or the renewed lease, or the relocation's old lease in
    /// `draining`), and the returned `undo` reverts it all. On failure nothing changed.
    public mutating func admit(_ req: CommitRequest, context ctx: AdmissionContext) throws(LeaseError) -> Admission {
        let now = ctx.now
        let policy = ctx.policy
        let point = req.enforcementPoint ?? ctx.defaultPoint
        guard let capacity = ctx.capacityKbit[point] else {
            throw LeaseError(.unknownEnforcementPoint, "enforcement point \"\(point)\" is not configured (known: \(ctx.capacityKbit.keys.sorted().joined(separator: ", ")))", field: "enforcement_point")
        }

        // Lifetime against the policy.
        let remainingMs: UInt64
        switch req.lifetime {
        case .ttl(let ms):
            guard ms <= policy.maxTTLMs else {
                throw LeaseError(.ttlExceedsPolicy, "ttl_ms \(ms) exceeds the policy maximum \(policy.maxTTLMs)", field: "ttl_ms")
            }
            remainingMs = ms
        case .expiresAt(let t):
            let delta = t.nanosecondsSinceEpoch - now.wall.nanosecondsSinceEpoch
            guard delta > 0 else {
                throw LeaseError(.alreadyExpired, "expires_at \(t.rfc3339) is not in the future (now \(now.wall.rfc3339))", field: "expires_at")
            }
            let ms = UInt64(delta) / 1_000_000
            guard ms <= policy.maxTTLMs else {
                throw LeaseError(.ttlExceedsPolicy, "expires_at is \(ms) ms away, beyond the policy maximum ttl \(policy.maxTTLMs) ms", field: "expires_at")
            }
            guard ms > 0 else { throw LeaseError(.alreadyExpired, "expires_at is less than 1 ms away", field: "expires_at") }
            remainingMs = ms
        }
        let deadline = now.boot.adding(milliseconds: remainingMs)
        let expiresAt = now.wall(at: deadline)

        // Anchor catalog.
        if let catalog = policy.anchors {
            guard let entry = catalog[req.anchor.id] else {
                throw LeaseError(.unknownAnchor, "anchor \"\(req.anchor.id)\" is not in the policy's anchor catalog", field: "anchor.id")
            }
            guard entry.address == req.anchor.address else {
                throw LeaseError(.anchorMismatch, "anchor \(req.anchor.id) is \(entry.address) in the catalog, not \(req.anchor.address)", field: "anchor.address")
            }
            if let ports = entry.ports, !ports.contains(req.anchor.port) {
                throw LeaseError(.anchorMismatch, "anchor \(req.anchor.id) does not serve port \(req.anchor.port) (catalog: \(ports.sorted().map(String.init).joined(separator: ",")))", field: "anchor.port")
            }
        }
        if let d = req.drainMs, d > policy.maxDrainMs {
            throw LeaseError(.invalidDrain, "drain_ms \(d) exceeds the policy maximum \(policy.maxDrainMs)", field: "drain_ms")
        }

        // Same lease id again: renewal, or a replay.
        if let existing = leases[req.leaseID] {
            guard req.generation >= existing.request.generation else {
                throw LeaseError(.replay, "lease \(req.leaseID) is at generation \(existing.request.generation); generation \(req.generation) is a replay", field: "generation")
            }
            return try renew(existing, with: req, point: point, capacity: capacity, deadline: deadline, expiresAt: expiresAt, context: ctx)
        }
        if let ended = endedGenerations[req.leaseID], req.generation <= ended {
            throw LeaseError(.replay, "lease \(req.leaseID) already ended at generation \(ended); a new lease under this id needs a higher generation", field: "generation")
        }

        var undo = Undo()
        var relocated: Lease?
        if let oldID = req.relocates {
            guard let old = leases[oldID] else {
                throw LeaseError(.relocationTargetUnknown, "relocates names lease \(oldID), which is not live", field: "relocates")
            }
            guard old.aisi == req.aisi else {
                throw LeaseError(.relocationAISIMismatch, "lease \(oldID) belongs to AISI \(old.aisi), not \(req.aisi); relocation keeps the AISI", field: "relocates")
            }
            guard old.state == .active else {
                throw LeaseError(.relocationConflict, "lease \(oldID) is \(old.state.rawValue); only an active lease can be relocated", field: "relocates")
            }
            guard old.classifier == req.classifier, old.enforcementPoint == point else {
                throw LeaseError(.relocationConflict, "a relocation keeps the AISI flow: classifier and enforcement point must equal those of lease \(oldID)", field: "classifier")
            }
            let recent = relocationsInWindow(aisi: req.aisi, now: now.boot)
            guard recent < policy.maxRelocationsPerMinute else {
                throw LeaseError(.relocationRateExceeded, "AISI \(req.aisi) was relocated \(recent) times in the last 60 s; the policy allows \(policy.maxRelocationsPerMinute)")
            }
            relocated = old
        }

        // Classifier conflicts: another lease already steers this flow.
        if let owner = steeringOwner(point: point, classifier: req.classifier), owner.id != relocated?.id {
            if owner.aisi != req.aisi {
                throw LeaseError(.classifierConflict, "classifier \(req.classifier) is held by lease \(owner.id) of AISI \(owner.aisi)", field: "classifier")
            }
            throw LeaseError(.classifierConflict, "classifier \(req.classifier) is already steered by lease \(owner.id) of the same AISI; relocate (relocates: \"\(owner.id)\") or revoke it", field: "classifier")
        }

        // Capacity: guaranteed rates of leases that own steering, the relocated one released.
        let current = points[point]?.guaranteedKbit ?? 0
        let freed = relocated?.request.qos.rateKbit ?? 0
        let needed = current - min(current, freed) + req.qos.rateKbit
        guard needed <= capacity else {
            throw LeaseError(.insufficientCapacity, "enforcement point \(point) has \(capacity - min(capacity, current - min(current, freed))) kbit/s of guaranteed capacity left; the lease asks \(req.qos.rateKbit)")
        }

        // Allocation.
        guard let mark = allocateMark(point: point, dueAt: deadline, now: now.boot, undo: &undo) else {
            rollback(undo)
            throw LeaseError(.qosClassesExhausted, "no free lease mark at \(point) (\(Layout.maxSlot) live leases)")
        }
        guard let cls = allocateClass(point: point, interface: ctx.anchorInterface, priority: req.qos.priority) else {
            rollback(undo)
            throw LeaseError(.qosClassesExhausted, "no free HTB class on \(ctx.anchorInterface) at \(point)")
        }

        if var old = relocated {
            undo.leases.append((old.id, old))
            undo.relocationLogs.append((req.aisi, relocationLog[req.aisi]))
            recordRelocation(aisi: req.aisi, at: now.boot)
            old.state = .draining
            old.replacedBy = req.leaseID
            let drain = req.drainMs ?? policy.defaultDrainMs
            old.drainEndsAt = min(old.deadline, now.boot.adding(milliseconds: drain))
            upsert(old)
        }
        var lease = Lease(request: req, state: .admitted, enforcementPoint: point, admittedAt: now,
                          deadline: deadline, expiresAt: expiresAt, mark: mark, qosClass: cls)
        lease.switchedAt = now.boot
        undo.leases.append((lease.id, nil))
        undo.endedGenerations.append((lease.id, endedGenerations[lease.id]))
        endedGenerations[lease.id] = nil
        upsert(lease)
        return Admission(kind: relocated.map { .relocation(old: $0.id) } ?? .new, lease: lease, undo: undo)
    }

    private mutating func renew(_ existing: Lease, with req: CommitRequest, point: String, capacity: UInt64,
                                deadline: BootInstant, expiresAt: WallTime, context ctx: AdmissionContext) throws(LeaseError) -> Admission {
        guard existing.state == .active else {
            throw LeaseError(.leaseNotActive, "lease \(existing.id) is \(existing.state.rawValue); only an active lease can be renewed")
        }
        func immutable(_ what: String, _ field: String) -> LeaseError {
            LeaseError(.immutableField, "renewal of lease \(existing.id) cannot change \(what); commit a new lease (or relocate) instead", field: field)
        }
        guard req.aisi == existing.request.aisi else { throw immutable("the AISI", "aisi") }
        guard req.classifier == existing.request.classifier else { throw immutable("the classifier", "classifier") }
        guard req.anchor == existing.request.anchor else { throw immutable("the anchor", "anchor") }
        guard point == existing.enforcementPoint else { throw immutable("the enforcement point", "enforcement_point") }

        let current = points[point]?.guaranteedKbit ?? 0
        let needed = current - min(current, existing.request.qos.rateKbit) + req.qos.rateKbit
        if req.qos.rateKbit > existing.request.qos.rateKbit && needed > capacity {
            throw LeaseError(.insufficientCapacity, "raising lease \(existing.id) to \(req.qos.rateKbit) kbit/s exceeds the capacity of \(point) (\(capacity) kbit/s)")
        }

        var undo = Undo()
        undo.leases.append((existing.id, existing))
        var renewed = existing
        // Keep the relocation bookkeeping of the original request.
        var newRequest = req
        newRequest.relocates = existing.request.relocates
        newRequest.drainMs = req.drainMs ?? existing.request.drainMs
        renewed.request = newRequest
        renewed.deadline = deadline
        renewed.expiresAt = expiresAt
        renewed.renewedAt = ctx.now
        if req.qos.priority != existing.request.qos.priority {
            // Groups are per priority: move to a class of the new priority.
            remove(existing.id)
            guard let cls = allocateClass(point: point, interface: existing.qosClass.interface, priority: req.qos.priority) else {
                upsert(existing)
                throw LeaseError(.qosClassesExhausted, "no free HTB class of priority \(req.qos.priority) on \(existing.qosClass.interface)")
            }
            renewed.qosClass = cls
        }
        upsert(renewed)
        return Admission(kind: .renewal(previous: existing), lease: renewed, undo: undo)
    }

    // MARK: lifecycle after admission

    /// The kernel state of an admitted lease exists: it becomes active.
    public mutating func activate(_ id: LeaseID, switchedAt: BootInstant) {
        guard var l = leases[id], let next = LeaseStateMachine.next(l.state, on: .installed) else { return }
        l.state = next
        l.switchedAt = switchedAt
        upsert(l)
    }

    /// Ends a live lease (revoke, expiry, drain end). Returns the ended record, or nil if the
    /// transition is not legal from its current state.
    @discardableResult
    public mutating func end(_ id: LeaseID, _ event: LeaseEvent, at now: ClockReading, undo: inout Undo) -> Lease? {
        guard var l = leases[id], let next = LeaseStateMachine.next(l.state, on: event), !next.isLive else { return nil }
        undo.leases.append((id, l))
        undo.endedGenerations.append((id, endedGenerations[id]))
        l.state = next
        l.endedAt = now
        upsert(l)
        return l
    }

    /// Live leases whose next deadline (drain end or expiry) is at or before `now`.
    public func due(at now: BootInstant) -> [Lease] {
        leases.values.filter { $0.nextDeadline <= now }
    }

    /// The earliest instant any live lease needs attention.
    public var earliestDeadline: BootInstant? {
        leases.values.lazy.map(\.nextDeadline).min()
    }
}
