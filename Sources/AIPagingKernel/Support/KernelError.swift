#if canImport(Glibc)
import Glibc
#endif

/// An error from the kernel or a syscall, carrying what was attempted, the errno and a hint.
///
/// `operation` names the syscall or netlink request (`"setns"`, `"NFT_MSG_NEWSETELEM"`),
/// `errno` is the kernel's answer, `detail` says what the agent was doing and how to fix it.
public struct KernelError: Error, Sendable, CustomStringConvertible, Equatable {
    public var operation: String
    public var errno: Int32
    public var detail: String

    public init(_ operation: String, errno: Int32, detail: String = "") {
        self.operation = operation
        self.errno = errno
        self.detail = detail
    }

    public var errnoName: String {
        switch errno {
        case EPERM: return "EPERM"
        case ENOENT: return "ENOENT"
        case EEXIST: return "EEXIST"
        case EINVAL: return "EINVAL"
        case EBUSY: return "EBUSY"
        case ENOMEM: return "ENOMEM"
        case ENOBUFS: return "ENOBUFS"
        case EMSGSIZE: return "EMSGSIZE"
        case EOPNOTSUPP: return "EOPNOTSUPP"
        case ENODEV: return "ENODEV"
        case ENETUNREACH: return "ENETUNREACH"
        case EAGAIN: return "EAGAIN"
        case ERANGE: return "ERANGE"
        case ENOSPC: return "ENOSPC"
        case EACCES: return "EACCES"
        case EINTR: return "EINTR"
        default: return "errno \(errno)"
        }
    }

    public var description: String {
        let reason = String(cString: strerror(errno))
        return detail.isEmpty
            ? "\(operation) failed: \(errnoName) (\(reason))"
            : "\(operation) failed: \(errnoName) (\(reason)): \(detail)"
    }
}

/// Runs a syscall-style body that returns -1 and sets errno on failure, retrying `EINTR`.
/// Programmer errors (`EBADF`, `EFAULT`) trap: they mean a bug in the agent, not a kernel answer.
@discardableResult
@inline(__always)
public func syscallRetrying<T: FixedWidthInteger>(
    _ name: @autoclosure () -> String,
    _ body: () -> T
) throws(KernelError) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let err = Glibc.errno
        if err == EINTR { continue }
        precondition(err != EBADF && err != EFAULT, "\(name()) returned \(err == EBADF ? "EBADF" : "EFAULT"): a bug in the agent")
        throw KernelError(name(), errno: err)
    }
}
