import SBXJSON

#if canImport(Glibc)
import Glibc
#endif

/// Why a call through `SandboxClient` got no answer. (An answer that is an error is not a
/// `ClientError`: `call` returns it as the failure of its result.)
public enum ClientError: Error, Sendable, CustomStringConvertible {
    case badSocketPath(SocketPathError)
    /// connect(2) failed: no socket file, nobody listening, no permission.
    case unreachable(socket: String, errno: Int32)
    case io(socket: String, FramingError)
    /// The daemon closed the connection before answering.
    case closed(socket: String)
    case protocolViolation(socket: String, ProtocolViolation)

    public var description: String {
        switch self {
        case .badSocketPath(let e): return e.description
        case let .unreachable(socket, e):
            let how = "sandboxd --workspace DIR" + (socket == SocketPath.defaultPath ? "" : " --socket \(socket)")
            return "cannot reach sandboxd at \(socket): \(String(cString: strerror(e))) (is it running? start it with: \(how))"
        case let .io(socket, e): return "connection to sandboxd at \(socket) failed: \(e)"
        case .closed(let socket): return "sandboxd at \(socket) closed the connection without answering"
        case let .protocolViolation(socket, v): return "sandboxd at \(socket) answered outside the protocol: \(v)"
        }
    }
}

/// A blocking connection to sandboxd: a request line out, its response line back. Plain POSIX
/// calls and no threads, so a short-lived `sbx` pays next to nothing to use it. One per thread.
public final class SandboxClient {
    public let socketPath: String
    /// The connected socket (closed by `deinit`).
    public let fd: Int32
    private var reader: LineReader
    private var nextID: Int64 = 1

    public init(socketPath: String) throws(ClientError) {
        self.socketPath = socketPath
        let address: UnixAddress
        do throws(SocketPathError) { address = try UnixAddress(socketPath) } catch { throw .badSocketPath(error) }
        do throws(FramingError) { fd = try connectUnix(address) } catch {
            guard case .io(_, let e) = error else { throw .io(socket: socketPath, error) }
            throw .unreachable(socket: socketPath, errno: e)
        }
        reader = LineReader(fd: fd, maxLineBytes: NDJSON.maxResponseBytes)
    }

    deinit { close(fd) }

    /// Sends one request and waits for its response; notifications that arrive first are skipped.
    public func call(_ method: Method, _ params: JSON = .object([])) throws(ClientError) -> Result<JSON, RPCError> {
        try call(method.rawValue, params)
    }

    public func call(_ method: String, _ params: JSON = .object([])) throws(ClientError) -> Result<JSON, RPCError> {
        let id = JSON.int(nextID)
        nextID += 1
        try send(Request(id: id, method: method, params: params).json)
        while true {
            guard let line = try readLine() else { throw .closed(socket: socketPath) }
            do throws(ProtocolViolation) {
                guard let response = try Response.decode(line) else { continue }
                guard response.id == id else { throw ProtocolViolation("response to id \(response.id.text), expected \(id.text)") }
                return response.outcome
            } catch {
                throw .protocolViolation(socket: socketPath, error)
            }
        }
    }

    /// Sends one JSON value as a line.
    public func send(_ message: JSON) throws(ClientError) {
        try sendRaw(Array((message.text + "\n").utf8))
    }

    /// Sends bytes as they are: no newline is added (tests use it to send broken framing).
    public func sendRaw(_ bytes: [UInt8]) throws(ClientError) {
        do throws(FramingError) { try sendAll(fd, bytes) } catch { throw .io(socket: socketPath, error) }
    }

    /// The next line the daemon sent, without its newline; nil when it closed the connection.
    public func readLine() throws(ClientError) -> [UInt8]? {
        do throws(FramingError) { return try reader.next() } catch { throw .io(socket: socketPath, error) }
    }

    /// Closes our sending half: the daemon reads end of stream after what was sent.
    public func shutdownWrite() { _ = shutdown(fd, Int32(SHUT_WR)) }
}
