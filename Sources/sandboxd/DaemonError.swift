import BranchFS
import SandboxProtocol

#if canImport(Glibc)
import Glibc
#endif

/// Why sandboxd could not start (or a thread could not be made): what failed, on which path, with which errno.
enum DaemonError: Error, CustomStringConvertible {
    case system(String, errno: Int32)
    /// Another daemon answers on the socket path.
    case socketInUse(String)
    /// Something that is not a socket sits at the socket path: never removed, it may be the user's file.
    case notASocket(String)
    /// Another daemon holds the state directory's lock.
    case stateInUse(String)
    case badSocketPath(SocketPathError)
    case branches(BranchError)

    var description: String {
        switch self {
        case let .system(what, e): return "\(what): \(String(cString: strerror(e))) (errno \(e))"
        case .socketInUse(let path): return "another sandboxd is already listening on \(path); stop it first or pick another --socket"
        case .notASocket(let path): return "\(path) exists and is not a socket; refusing to replace it (remove it or pick another --socket)"
        case .stateInUse(let dir): return "another sandboxd is using the state directory \(dir); stop it first or pick another --state"
        case .badSocketPath(let e): return e.description
        case .branches(let e): return "cannot open the branches: \(e)"
        }
    }
}
