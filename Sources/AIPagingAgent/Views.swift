import AIPagingCore

/// JSON renderings of agent state for the control API (stable field names; see openapi/).
enum Views {
    static func hex(_ v: UInt32) -> String { "0x" + String(v, radix: 16) }

    static func lease(_ l: Lease, now: ClockReading) -> JSON {
        var o = JSON.Object()
        o["lease_id"] = .string(l.id)
        o["aisi"] = .string(l.aisi)
        o["state"] = .string(l.state.rawValue)
        o["enforcement_point"] = .string(l.enforcementPoint)
        o["classifier"] = l.classifier.json
        o["anchor"] = l.request.anchor.json
        o["qos"] = l.request.qos.json
        o["generation"] = .int(l.request.generation)
        o["admitted_at"] = .string(l.admittedAt.wall.rfc3339)
        if l.renewedAt != l.admittedAt { o["renewed_at"] = .string(l.renewedAt.wall.rfc3339) }
        o["expires_at"] = .string(l.expiresAt.rfc3339)
        o["remaining_ms"] = .int(now.boot.milliseconds(until: l.deadline))
        o["relocates"] = .optional(l.request.relocates)
        if let r = l.replacedBy { o["replaced_by"] = .string(r) }
        if let end = l.drainEndsAt {
            o["drain_ends_at"] = .string(now.wall(at: end).rfc3339)
            o["drain_remaining_ms"] = .int(now.boot.milliseconds(until: end))
        }
        if let s = l.switchedAt { o["switched_at"] = .string(now.wall(at: s).rfc3339) }
        if let e = l.endedAt { o["ended_at"] = .string(e.wall.rfc3339) }
        o["kernel"] = .object(JSON.Object([
            "mark": .string(hex(l.mark)),
            "class": .string(l.qosClass.description),
            "interface": .string(l.qosClass.interface),
        ]))
        return .object(o)
    }

    static func commit(_ c: CommitOutcome, now: ClockReading) -> JSON {
        guard case .object(var o) = lease(c.lease, now: now) else { return .null }
        switch c.kind {
        case .new: o["result"] = "admitted"
        case .renewal: o["result"] = "renewed"
        case .relocation: o["result"] = "relocated"
        }
        o["switched_at"] = .string(c.switchedAt.wall.rfc3339)
        o["install_us"] = .int(Int64(c.installNanoseconds / 1000))
        if let r = c.relocated {
            o["relocated"] = lease(r, now: now)
            if let end = r.drainEndsAt { o["drain_ends_at"] = .string(now.wall(at: end).rfc3339) }
        }
        return .object(o)
    }
}
