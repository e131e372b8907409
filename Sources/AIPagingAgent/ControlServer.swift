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
    /// Largest body of a batch (`POST /v1/leases`).
    public var maxBatchBodyBytes = 8 * 1024 * 1024
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
    /// The socket file the agent created and removes when it stops; nil for a socket it was
    /// handed (socket activation), whose file belongs to systemd.
    public var path: String?

    /// Wraps an already-listening socket; the server takes ownership of `fd`.
    public init(fd: Int32, path: String?) {
        self.fd = fd
        self.path = path
    }

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

/// Runs Swift tasks on a NIO event loop thread (a `TaskExecutor`), so request handling, the
/// lease service (whose serial executor is the same loop) and socket I/O share one thread and
/// a request never waits for a thread switch.
public final class EventLoopTaskExecutor: TaskExecutor, @unchecked Sendable {
    // Sendable: `loop` is a Sendable EventLoop and never changes.
    public let loop: any EventLoop
    public init(_ loop: any EventLoop) { self.loop = loop }

    public func enqueue(_ job: consuming ExecutorJob) {
        let unowned = UnownedJob(job)
        loop.execute { unowned.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}

/// HTTP/1.1 on the Unix socket with SwiftNIO's codec: each connection is checked with
/// SO_PEERCRED, requests are bounded in size and time, and handed to `ControlAPI` on the
/// agent's event loop.
public final class ControlServer: Sendable {
    let api: ControlAPI
    let limits: ServerLimits
    let group: MultiThreadedEventLoopGroup
    let ownsGroup: Bool
    let executor: EventLoopTaskExecutor
    let logger: Logger

    /// Serves on `group` (the agent's event loop, shared with the lease service) or on its own
    /// one-thread group.
    public init(api: ControlAPI, limits: ServerLimits = ServerLimits(), group: MultiThreadedEventLoopGroup? = nil,
                logger: Logger = Logger(label: "aipaging.api")) {
        self.api = api
        self.limits = limits
        self.ownsGroup = group == nil
        self.group = group ?? MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.executor = EventLoopTaskExecutor(self.group.next())
        if ownsGroup { self.group.next().execute { ThreadScheduling.enterLatencyCritical(.http) } }
        self.logger = logger
    }

    /// Serves on `socket` until the task is cancelled.
    public func run(on socket: ListeningSocket, onReady: @Sendable () -> Void = {}) async throws {
        let limits = self.limits, api = self.api, executor = self.executor, logger = self.logger
        let server = try await ServerBootstrap(group: group, childGroup: executor.loop)
            .serverChannelOption(.backlog, value: 512)
            .childChannelInitializer { channel in
                let provider = channel as! any SocketOptionProvider
                let cred: EventLoopFuture<aip_ucred> = provider.unsafeGetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
                return cred.flatMapThrowing { c in
                    let sync = channel.pipeline.syncOperations
                    try sync.configureHTTPServerPipeline(withErrorHandling: true)
                    try sync.addHandler(IdleStateHandler(readTimeout: limits.idleTimeout))
                    try sync.addHandler(HTTPRequestHandler(api: api, peer: PeerCredentials(pid: c.pid, uid: c.uid, gid: c.gid),
                                                           limits: limits, executor: executor, logger: logger))
                }
            }
            .withBoundSocket(socket.fd).get()
        onReady()
        try await withTaskCancellationHandler {
            try await server.closeFuture.get()
        } onCancel: {
            server.close(promise: nil)
        }
    }

    public func shutdown() async {
        if ownsGroup { try? await group.shutdownGracefully() }
    }
}

/// One connection's HTTP handling on its event loop: collects a request (bounded in size and
/// time), runs `ControlAPI.handle` as a task on the same loop, writes the response (or streams
/// it). Idle keep-alive connections are closed; a stream in progress is not idle.
final class HTTPRequestHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let api: ControlAPI
    let peer: PeerCredentials
    let limits: ServerLimits
    let executor: EventLoopTaskExecutor
    let logger: Logger
    var head: HTTPRequestHead?
    var body: [UInt8] = []
    var tooLarge = false
    var limit = 0
    var deadline: Scheduled<Void>?
    var busy = false
    var task: Task<Void, Never>?

    init(api: ControlAPI, peer: PeerCredentials, limits: ServerLimits, executor: EventLoopTaskExecutor, logger: Logger) {
        self.api = api
        self.peer = peer
        self.limits = limits
        self.executor = executor
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body = []
            let path = h.uri.split(separator: "?", maxSplits: 1).first ?? ""
            limit = h.method == .POST && path == "/v1/leases" ? limits.maxBatchBodyBytes : limits.maxBodyBytes
            tooLarge = h.headers.first(name: "content-length").flatMap(Int.init).map { $0 > limit } ?? false
            let ctx = context
            deadline = context.eventLoop.assumeIsolated().scheduleTask(in: limits.requestTimeout) {
                self.respondAndClose(ctx, LeaseError(.requestTimeout, "the request did not complete within the server's time limit"))
            }
        case .body(var buf):
            guard !tooLarge else { return }
            if body.count + buf.readableBytes > limit {
                tooLarge = true
                body = []
            } else if let bytes = buf.readBytes(length: buf.readableBytes) {
                body += bytes
            }
        case .end:
            deadline?.cancel()
            deadline = nil
            guard let h = head else { return }
            head = nil
            if tooLarge {
                respondAndClose(context, LeaseError(.payloadTooLarge, "the request body exceeds \(limit) bytes"))
                return
            }
            let req = APIRequest(method: h.method.rawValue, target: h.uri, contentType: h.headers.first(name: "content-type"),
                                 body: body, peer: peer)
            body = []
            busy = true
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            let api = self.api
            task = Task(executorPreference: executor) {
                let response = await api.handle(req)
                switch response.body {
                case .bytes:
                    let (handler, ctx) = bound.value
                    handler.writeHead(response, keepAlive: h.isKeepAlive, version: h.version, context: ctx)
                case .stream(let chunks):
                    do {
                        let (handler, ctx) = bound.value
                        handler.writeHead(response, keepAlive: false, version: h.version, context: ctx)
                    }
                    for await c in chunks {
                        let (handler, ctx) = bound.value
                        guard ctx.channel.isActive else { break }
                        handler.writeChunk(c, context: ctx)
                    }
                    let (handler, ctx) = bound.value
                    handler.finishStream(context: ctx)
                }
            }
        }
    }

    /// Writes a whole response (or, for a stream, its head).
    func writeHead(_ r: APIResponse, keepAlive: Bool, version: HTTPVersion, context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: r.contentType)
        headers.add(name: "Server", value: "aipaging-agent/\(AgentVersion.string)")
        for (k, v) in r.headers { headers.add(name: k, value: v) }
        let status = HTTPResponseStatus(statusCode: r.status)
        switch r.body {
        case .bytes(let b):
            headers.add(name: "Content-Length", value: String(b.count))
            headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: version, status: status, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: b)))), promise: nil)
            let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
            busy = false
            if !keepAlive { done.assumeIsolated().whenComplete { _ in context.close(promise: nil) } }
        case .stream:
            headers.add(name: "Transfer-Encoding", value: "chunked")
            headers.add(name: "Cache-Control", value: "no-store")
            context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: version, status: status, headers: headers))), promise: nil)
        }
    }

    func writeChunk(_ c: [UInt8], context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: c)))), promise: nil)
    }

    func finishStream(context: ChannelHandlerContext) {
        busy = false
        guard context.channel.isActive else { return }
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    func respondAndClose(_ context: ChannelHandlerContext, _ e: LeaseError) {
        let body = e.body.bytes()
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: String(body.count))
        headers.add(name: "Connection", value: "close")
        let status = HTTPResponseStatus(statusCode: e.status)
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            if !busy && head == nil { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
        task?.cancel()
        task = nil
        context.fireChannelInactive()
    }
}
