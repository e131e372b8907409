/// The order in which the evidence exporter, which hands window records to the log a chunk at a
/// time (only while the log's writer keeps up), gets to its sessions.
///
/// A pass visits every session once, with a target window: the session's record covers every
/// window it still owes up to the target. When a newer window becomes due while a pass is being
/// written, the pass goes on where it is with the newer target, and another pass follows for the
/// sessions it had already passed. (Restarting the pass from its first session instead starves
/// the last ones whenever a pass takes longer than a window: at 100 000 leases they never got a
/// record and their open windows piled up.) So every session gets a record at least once per two
/// passes' time, however slow the writer.
public struct FinalizationPasses<Element> {
    private var queue: ArraySlice<Element> = []
    private var target: Int64 = 0
    private var again = false

    public init() {}

    /// Whether a pass is under way or due.
    public var active: Bool { !queue.isEmpty || again }

    /// Window `window` became due; `snapshot` lists the sessions (in the order a pass visits them).
    public mutating func due(_ window: Int64, snapshot: () -> [Element]) {
        if queue.isEmpty && !again {
            target = window
            queue = snapshot()[...]
        } else {
            target = max(target, window)
            again = true
        }
    }

    /// The next session and the window its record should cover up to; nil when no pass is left.
    /// `snapshot` lists the sessions for a pass that follows on.
    public mutating func next(snapshot: () -> [Element]) -> (Element, Int64)? {
        if queue.isEmpty && again {
            again = false
            queue = snapshot()[...]
        }
        guard let e = queue.popFirst() else { return nil }
        return (e, target)
    }
}
