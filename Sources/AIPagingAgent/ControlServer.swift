import AIPagingCore
import CAIPagingShim
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// Limits of the control socket.
public struct ServerLimits: Sendable {
    /// Largest request body accepted (413 beyond).
    public var maxBodyBytes = 64 * 1024
    /// Time from the first byte of a request to its end (408 beyond).
    public var requestTimeout = TimeAmount.seconds(10)
    /// Idle keep-alive connections are closed after this.
    public var idleTimeout = TimeAmount.seconds(60)
    public init() {}
}

/// The listening Unix socket: created by the agent with restrictive permissions, or handed over
/// by systemd (socket activation).
public struct ListeningSocket: Sendable {
    public var fd: Int32
    public var path: String?

    /// Creates `path` as a listening stream socket with mode `mode` (0600 by default), owned by
    /// `group` if given. The umask is tightened around bind() so the socket is never more open
    /// than `mode`, even for an instant.
    public static func bind(path: String, mode: mode_t = 0o600, group: gid_t? = nil, backlog: Int32 = 512) throws -> ListeningSocket {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw ServerError("socket path is too long (\(bytes.count) bytes): \(path)")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        // A stale socket file from a previous run is replaced; anything else is refused.
        var st = stat()
        if lstat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFSOCK else {
                throw ServerError("\(path) exists and is not a socket; refusing to replace it")
            }
            unlink(path)
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ServerError("socket(AF_UNIX): \(String(cString: strerror(errno)))") }
        let old = umask(0o177)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        let bindErr = errno
        umask(old)
        guard rc == 0 else {
            close(fd)
            throw ServerError("bind(\(path)): \(String(cString: strerror(bindErr))); does the directory exist and is it writable?")
        }
        if let group, chown(path, uid_t.max, group) != 0 {
            let e = errno
            close(fd)
            throw ServerError("chown(\(path), group \(group)): \(String(cString: strerror(e)))")
        }
        guard chmod(path, mode) == 0, listen(fd, backlog) == 0 else {
            let e = errno
            close(fd)
            throw ServerError("chmod/listen(\(path)): \(String(cString: strerror(e)))")
        }
        return ListeningSocket(fd: fd, path: path)
    }
}

public struct ServerError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ d: String) { description = d }
}

/// HTTP/1.1 on the Unix socket with SwiftNIO's codec: each connection is checked with
/// SO_PEERCRED, requests are bounded in size and time, and handed to `ControlAPI`.
public final class ControlServer: Sendable {
    let api: ControlAPI
    let limits: ServerLimits
    let group: MultiThreadedEventLoopGroup
    let logger: Logger

    public init(api: ControlAPI, limits: ServerLimits = ServerLimits(), threads: Int = 1, logger: Logger = Logger(label: "aipaging.api")) {
        self.api = api
        self.limits = limits
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        self.logger = logger
    }

    typealias Connection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

    /// Serves on `socket` until the task is cancelled.
    public func run(on socket: ListeningSocket, onReady: @Sendable () -> Void = {}) async throws {
        let limits = self.limits
        let server = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 512)
            .bind(socket.fd) { channel in
                let provider = channel as! any SocketOptionProvider
                let cred: EventLoopFuture<aip_ucred> = provider.unsafeGetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
                return cred.flatMapThrowing { c in
                    let sync = channel.pipeline.syncOperations
                    try sync.configureHTTPServerPipeline(withErrorHandling: true)
                    try sync.addHandler(IdleStateHandler(readTimeout: limits.idleTimeout))
                    try sync.addHandler(RequestDeadlineHandler(timeout: limits.requestTimeout))
                    let conn = try Connection(wrappingChannelSynchronously: channel)
                    return (conn, PeerCredentials(pid: c.pid, uid: c.uid, gid: c.gid))
                }
            }
        onReady()
        try await withThrowingDiscardingTaskGroup { tasks in
            try await server.executeThenClose { inbound in
                for try await (conn, peer) in inbound {
                    tasks.addTask { await self.serve(conn, peer: peer) }
                }
            }
        }
    }

    public func shutdown() async {
        try? await group.shutdownGracefully()
    }

    func serve(_ conn: Connection, peer: PeerCredentials) async {
        do {
            try await conn.executeThenClose { inbound, outbound in
                var head: HTTPRequestHead?
                var body: [UInt8] = []
                var tooLarge = false
                for try await part in inbound {
                    switch part {
                    case .head(let h):
                        head = h
                        body = []
                        tooLarge = false
                        if let cl = h.headers.first(name: "content-length").flatMap(Int.init), cl > limits.maxBodyBytes {
                            tooLarge = true
                        }
                    case .body(var buf):
                        if !tooLarge {
                            if body.count + buf.readableBytes > limits.maxBodyBytes {
                                tooLarge = true
                                body = []
                            } else if let bytes = buf.readBytes(length: buf.readableBytes) {
                                body += bytes
                            }
                        }
                    case .end:
                        guard let h = head else { continue }
                        head = nil
                        let keepAlive = h.isKeepAlive && !tooLarge
                        let response: APIResponse
                        if tooLarge {
                            response = .error(LeaseError(.payloadTooLarge, "the request body exceeds \(limits.maxBodyBytes) bytes"))
                        } else {
                            let req = APIRequest(method: h.method.rawValue, target: h.uri,
                                                 contentType: h.headers.first(name: "content-type"), body: body, peer: peer)
                            response = await api.handle(req)
                        }
                        try await write(response, keepAlive: keepAlive, version: h.version, to: outbound)
                        if !keepAlive { return }
                    }
                }
            }
        } catch {
            logger.debug("connection ended", metadata: ["error": "\(error)"])
        }
    }

    func write(_ r: APIResponse, keepAlive: Bool, version: HTTPVersion,
               to out: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>) async throws {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: r.contentType)
        headers.add(name: "Server", value: "aipaging-agent/\(AgentVersion.string)")
        for (k, v) in r.headers { headers.add(name: k, value: v) }
        switch r.body {
        case .bytes(let b):
            headers.add(name: "Content-Length", value: String(b.count))
            headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
            let head = HTTPResponseHead(version: version, status: .init(statusCode: r.status), headers: headers)
            try await out.write(contentsOf: [.head(head), .body(.byteBuffer(ByteBuffer(bytes: b))), .end(nil)])
        case .stream(let chunks):
            headers.add(name: "Transfer-Encoding", value: "chunked")
            headers.add(name: "Cache-Control", value: "no-store")
            try await out.write(.head(HTTPResponseHead(version: version, status: .init(statusCode: r.status), headers: headers)))
            for await c in chunks {
                try await out.write(.body(.byteBuffer(ByteBuffer(bytes: c))))
            }
            try await out.write(.end(nil))
        }
    }
}

/// Answers 408 and closes a connection whose request does not complete in time (a slow or
/// stalled client cannot hold the agent), and closes idle keep-alive connections.
final class RequestDeadlineHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    let timeout: TimeAmount
    var timer: Scheduled<Void>?

    init(timeout: TimeAmount) { self.timeout = timeout }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head:
            timer?.cancel()
            let ctx = context
            timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
                let body = LeaseError(.requestTimeout, "the request did not complete within the server's time limit").body.serialized()
                var headers = HTTPHeaders()
                headers.add(name: "Content-Type", value: "application/json")
                headers.add(name: "Content-Length", value: String(body.utf8.count))
                headers.add(name: "Connection", value: "close")
                ctx.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .requestTimeout, headers: headers))), promise: nil)
                ctx.write(self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
                ctx.writeAndFlush(self.wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in ctx.close(promise: nil) }
            }
        case .end:
            timer?.cancel()
            timer = nil
        case .body:
            break
        }
        context.fireChannelRead(data)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        context.fireChannelInactive()
    }
}
