#if canImport(Glibc)
import Glibc
#endif
import CNetlinkRoute

/// Owner of one libnl `rtnl_class`; deinit drops the reference (`rtnl_class_put`).
/// Used only inside one `TrafficControl` call; never stored or shared.
final class LibnlClass {
    let raw: OpaquePointer
    init() throws(KernelError) {
        guard let c = rtnl_class_alloc() else { throw KernelError("rtnl_class_alloc", errno: ENOMEM) }
        raw = c
    }
    deinit { rtnl_class_put(raw) }
    /// The same object seen as `struct rtnl_tc *` (libnl's `TC_CAST`).
    var tc: OpaquePointer { raw }
}

/// Owner of one libnl `rtnl_qdisc`; deinit drops the reference (`rtnl_qdisc_put`).
final class LibnlQdisc {
    let raw: OpaquePointer
    init() throws(KernelError) {
        guard let q = rtnl_qdisc_alloc() else { throw KernelError("rtnl_qdisc_alloc", errno: ENOMEM) }
        raw = q
    }
    deinit { rtnl_qdisc_put(raw) }
    var tc: OpaquePointer { raw }
}

/// Parses one received rtnetlink message with libnl's object parsers (`nl_msg_parse`) and hands
/// the parsed object (`rtnl_class *`, `rtnl_qdisc *`, valid only during the call) to `body`.
/// The temporary `nl_msg` copy is freed before returning.
func withLibnlObject(
    parsing message: NetlinkWire.Message, _ body: (OpaquePointer) -> Void
) throws(KernelError) {
    let header = UnsafeMutableRawPointer(mutating: message.whole.baseAddress!)
        .assumingMemoryBound(to: nlmsghdr.self)
    guard let msg = nlmsg_convert(header) else { throw KernelError("nlmsg_convert", errno: ENOMEM) }
    let owned = NLMessage(adopting: msg)
    nlmsg_set_proto(owned.raw, NETLINK_ROUTE)
    let rc = withoutActuallyEscaping(body) { escapable in
        let sink = ParseSink(escapable)
        return withExtendedLifetime(sink) {
            nl_msg_parse(owned.raw, { object, context in
                guard let object, let context else { return }
                Unmanaged<ParseSink>.fromOpaque(context).takeUnretainedValue().object(object)
            }, Unmanaged.passUnretained(sink).toOpaque())
        }
    }
    if rc < 0 {
        throw KernelError("nl_msg_parse", errno: EPROTO,
                          detail: "libnl could not parse a message of type \(message.type): \(String(cString: nl_geterror(rc)))")
    }
}

/// Carries the per-object closure through libnl's C callback; lives for one `nl_msg_parse` call.
private final class ParseSink {
    let body: (OpaquePointer) -> Void
    init(_ body: @escaping (OpaquePointer) -> Void) { self.body = body }
    func object(_ o: OpaquePointer) { body(o) }
}
