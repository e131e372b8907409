#if canImport(Glibc)
import Glibc
#endif

/// A minimal blocking HTTP/1.1 client over a Unix stream socket: what `curl --unix-socket`
/// does, without curl. One request per connection.
public struct UnixHTTPClient: Sendable {
    public let path: String
    public init(path: String) { self.path = path }

    public struct Response: Sendable {
        public var status: Int
        public var headers: [String: String]
        public var body: [UInt8]
    }

    public struct ClientError: Error, CustomStringConvertible {
        public var description: String
    }

    public func connect() throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ClientError(description: "socket: \(String(cString: strerror(errno)))") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            close(fd)
            throw ClientError(description: "socket path too long: \(path)")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let e = errno
            close(fd)
            throw ClientError(description: "cannot connect to the agent at \(path): \(String(cString: strerror(e))) (is aipaging-agent running? --socket sets the path)")
        }
        return fd
    }

    public func request(_ method: String, _ target: String, body: [UInt8]? = nil, contentType: String = "application/json",
                 onChunk: (([UInt8]) -> Bool)? = nil) throws -> Response {
        let fd = try connect()
        defer { close(fd) }
        var reader = Reader(fd: fd)
        return try exchange(fd, &reader, method, target, body: body, contentType: contentType, keepAlive: false, onChunk: onChunk)
    }

    /// A kept-alive connection for many requests in sequence (what a controller does).
    public final class Connection {
        let client: UnixHTTPClient
        var fd: Int32 = -1
        var reader: Reader

        public init(_ client: UnixHTTPClient) throws {
            self.client = client
            fd = try client.connect()
            reader = Reader(fd: fd)
        }

        deinit { if fd >= 0 { close(fd) } }

        /// One request on the connection; reconnects once if the agent closed it meanwhile.
        public func request(_ method: String, _ target: String, body: [UInt8]? = nil,
                            contentType: String = "application/json") throws -> Response {
            do {
                return try client.exchange(fd, &reader, method, target, body: body, contentType: contentType, keepAlive: true, onChunk: nil)
            } catch {
                close(fd)
                fd = try client.connect()
                reader = Reader(fd: fd)
                return try client.exchange(fd, &reader, method, target, body: body, contentType: contentType, keepAlive: true, onChunk: nil)
            }
        }
    }

    func exchange(_ fd: Int32, _ reader: inout Reader, _ method: String, _ target: String, body: [UInt8]?, contentType: String,
                  keepAlive: Bool, onChunk: (([UInt8]) -> Bool)?) throws -> Response {
        var head = "\(method) \(target) HTTP/1.1\r\nHost: agent\r\nUser-Agent: aipagingctl\r\nConnection: \(keepAlive ? "keep-alive" : "close")\r\n"
        if let body {
            head += "Content-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n"
        }
        head += "\r\n"
        try writeAll(fd, Array(head.utf8) + (body ?? []))
        let statusLine = try reader.line()
        let parts = statusLine.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, let status = Int(parts[1]) else { throw ClientError(description: "bad status line: \(statusLine)") }
        var headers: [String: String] = [:]
        while true {
            let l = try reader.line()
            if l.isEmpty { break }
            if let colon = l.firstIndex(of: ":") {
                headers[l[..<colon].lowercased()] = String(l[l.index(after: colon)...]).trimmingCharacters(in: " ")
            }
        }
        var out: [UInt8] = []
        if headers["transfer-encoding"]?.lowercased() == "chunked" {
            while true {
                let sizeLine = try reader.line()
                guard let size = Int(sizeLine.split(separator: ";").first ?? "", radix: 16) else { throw ClientError(description: "bad chunk") }
                if size == 0 { _ = try? reader.line(); break }
                let chunk = try reader.bytes(size)
                _ = try reader.line()
                if let onChunk {
                    if !onChunk(chunk) { break }
                } else {
                    out += chunk
                }
            }
        } else if let cl = headers["content-length"].flatMap(Int.init) {
            out = try reader.bytes(cl)
        } else {
            out = try reader.rest()
        }
        return Response(status: status, headers: headers, body: out)
    }

    public func writeAll(_ fd: Int32, _ data: [UInt8]) throws {
        var off = 0
        while off < data.count {
            let n = data[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw ClientError(description: "write: \(String(cString: strerror(errno)))")
            }
            off += n
        }
    }

    struct Reader {
        let fd: Int32
        var buf: [UInt8] = []
        var pos = 0

        mutating func fill() throws -> Bool {
            var tmp = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = tmp.withUnsafeMutableBytes { read(fd, $0.baseAddress, 65536) }
                if n < 0 && errno == EINTR { continue }
                if n < 0 { throw ClientError(description: "read: \(String(cString: strerror(errno)))") }
                if n == 0 { return false }
                if pos > 0 { buf.removeFirst(pos); pos = 0 }
                buf += tmp[0..<n]
                return true
            }
        }

        mutating func line() throws -> String {
            while true {
                if let i = buf[pos...].firstIndex(of: 0x0A) {
                    var end = i
                    if end > pos && buf[end - 1] == 0x0D { end -= 1 }
                    let s = String(decoding: buf[pos..<end], as: UTF8.self)
                    pos = i + 1
                    return s
                }
                guard try fill() else { throw ClientError(description: "connection closed by the agent") }
            }
        }

        mutating func bytes(_ n: Int) throws -> [UInt8] {
            while buf.count - pos < n {
                guard try fill() else { throw ClientError(description: "connection closed by the agent") }
            }
            let out = Array(buf[pos..<(pos + n)])
            pos += n
            return out
        }

        mutating func rest() throws -> [UInt8] {
            while try fill() {}
            let out = Array(buf[pos...])
            pos = buf.count
            return out
        }
    }
}

extension String {
    public func trimmingCharacters(in set: Character) -> String {
        var s = Substring(self)
        while s.first == set { s = s.dropFirst() }
        while s.last == set { s = s.dropLast() }
        return String(s)
    }
}
