#if canImport(Glibc)
import Glibc
#endif

/// Where sbx looks for the daemon (DESIGN §7): `--socket`, then `$SBX_SOCKET`, then the default.
public enum SocketPath {
    public static let defaultPath = "/run/sbx/sandboxd.sock"
    public static let environmentVariable = "SBX_SOCKET"

    public static func resolve(option: String?) -> String {
        if let option, !option.isEmpty { return option }
        if let env = getenv(environmentVariable), env.pointee != 0 { return String(cString: env) }
        return defaultPath
    }
}

/// A Unix socket path that does not fit `sockaddr_un` (107 bytes and a NUL) or holds a NUL.
public struct SocketPathError: Error, Equatable, Sendable, CustomStringConvertible {
    public let path: String
    public var description: String {
        "socket path \(path) is too long or malformed (at most \(UnixAddress.maxPathBytes) bytes, no NUL)"
    }
}

/// A filled `sockaddr_un` for a filesystem path.
public struct UnixAddress {
    public static let maxPathBytes = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1
    private var address = sockaddr_un()

    public init(_ path: String) throws(SocketPathError) {
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count <= Self.maxPathBytes, !bytes.contains(0) else { throw SocketPathError(path: path) }
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
    }

    /// Calls `body` with the address as `bind` and `connect` take it.
    public func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        withUnsafePointer(to: address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }
}

/// A new close-on-exec Unix stream socket (`socket(2)`); -1 with errno set on failure.
public func unixStreamSocket() -> Int32 {
    socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
}

/// Connects a new socket to `address`; the error carries the errno of `socket` or `connect`.
public func connectUnix(_ address: UnixAddress) throws(FramingError) -> Int32 {
    let fd = unixStreamSocket()
    guard fd >= 0 else { throw .io("socket", errno: errno) }
    while true {
        if address.withSockaddr({ connect(fd, $0, $1) }) == 0 { return fd }
        let e = errno
        if e == EINTR { continue }
        if e == EISCONN { return fd }  // an interrupted connect completed meanwhile
        close(fd)
        throw .io("connect", errno: e)
    }
}
