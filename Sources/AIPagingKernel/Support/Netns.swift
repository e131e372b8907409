#if canImport(Glibc)
import Glibc
#endif
import CAIPagingShim

/// Where kernel sockets are opened: the agent's own network namespace or a named one.
public enum NetworkNamespace: Sendable, Hashable, CustomStringConvertible {
    /// The namespace the agent process runs in.
    case current
    /// `/run/netns/NAME`, as created by `ip netns add NAME`.
    case named(String)
    /// Any namespace file (e.g. `/proc/PID/ns/net`).
    case path(String)

    public var path: String? {
        switch self {
        case .current: return nil
        case .named(let name): return "/run/netns/\(name)"
        case .path(let p): return p
        }
    }

    public var description: String {
        switch self {
        case .current: return "(agent's namespace)"
        case .named(let name): return name
        case .path(let p): return p
        }
    }
}

/// Runs `body` on a fresh OS thread that has joined `namespace` and ends afterwards.
///
/// `setns` changes only the calling thread, so the agent never calls it on a pooled thread.
/// Sockets created inside `body` stay bound to that namespace for their whole life and can be
/// used from any thread afterwards. Equivalent to `ip netns exec NAME` for one socket() call.
public func withNetworkNamespace<T: Sendable>(
    _ namespace: NetworkNamespace,
    _ body: @escaping @Sendable () throws -> T
) throws -> T {
    guard let path = namespace.path else { return try body() }
    let box = ThreadResultBox<T>()
    let ctx = Unmanaged.passRetained(ThreadJob {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            let err = errno
            box.result = .failure(KernelError("open", errno: err,
                detail: "network namespace \(path) does not exist or is not readable; create it with `ip netns add`"))
            return
        }
        defer { close(fd) }
        if aip_setns_net(fd) != 0 {
            let err = errno
            box.result = .failure(KernelError("setns", errno: err,
                detail: "joining \(path) needs CAP_SYS_ADMIN"))
            return
        }
        do { box.result = .success(try body()) } catch { box.result = .failure(error) }
    })
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { raw in
        let job = Unmanaged<ThreadJob>.fromOpaque(raw!).takeRetainedValue()
        job.run()
        return nil
    }, ctx.toOpaque())
    if rc != 0 {
        ctx.release()
        throw KernelError("pthread_create", errno: rc)
    }
    pthread_join(thread, nil)
    switch box.result! {
    case .success(let v): return v
    case .failure(let e): throw e
    }
}

private final class ThreadJob {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}

// Written by the namespace thread before it ends and read after pthread_join, which orders the
// two accesses; no other thread touches it.
private final class ThreadResultBox<T>: @unchecked Sendable {
    var result: Result<T, any Error>?
}
